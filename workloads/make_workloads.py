"""Regenerate the bundled workloads: ``python workloads/make_workloads.py``.

Deterministic (seeded ``random``): running it again rewrites byte-identical files, so a diff
in ``workloads/*.jsonl`` always means someone changed this script. The sidecars
(``<name>.yaml``) are written by hand and not touched here.

The bundled workloads must run on the CPU tiny Llama (max_model_len 2048, a 512-token BPE
trained on a few lines). That tokenizer packs only ~1.5 characters of English per token, far
below a real model's ~4, so the budget check below uses a deliberately pessimistic ratio.
Prompts are plain strings: the tiny model has no chat template.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

SEED = 20261122
HERE = Path(__file__).resolve().parent
# Every prompt + expected_output_tokens must stay under this many tokens.
TOKEN_BUDGET = 1500
# Measured on the tiny model's BPE (1.44-1.67 chars/token on English prose); rounded down.
WORST_CHARS_PER_TOKEN = 1.4

Request = dict[str, object]

# --- content pools ---------------------------------------------------------------------------

QUESTIONS = [
    "What's the difference between a process and a thread?",
    "How do I undo the last git commit but keep my changes?",
    "why is the sky blue",
    "Is it safe to run two pip installs at the same time in the same virtualenv?",
    "What does HTTP status 429 mean and how should a client handle it?",
    "How long should I boil an egg if I want the yolk still runny?",
    "Can you explain what p99 latency means in one paragraph?",
    "What are the pros and cons of using SQLite in production?",
    "How does a bloom filter work?",
    "what's a good name for a grey cat that sleeps all day",
    "Explain the CAP theorem like I'm new to distributed systems.",
    "How do I convert a UTC timestamp to local time in JavaScript?",
    "Why does my sourdough keep coming out dense and flat?",
    "What is the time complexity of heapq.heappush?",
    "is 0.1 + 0.2 == 0.3 in python? why not",
    "What's a reasonable way to version a REST API?",
    "How do vaccines train the immune system?",
    "Which is faster for membership tests in Python, a list or a set, and why?",
    "What does the KV cache do in a transformer?",
    "Give me three tips to speed up a slow pytest suite.",
    "Should I use UUIDs or auto-increment integers as primary keys?",
    "What's the best way to learn touch typing as an adult?",
    "How do noise-cancelling headphones actually cancel noise?",
    "When does it make sense to use a message queue instead of direct HTTP calls?",
    "What is the difference between latency and throughput?",
    "How much water should I drink during a two hour hike in summer?",
]

CODING_TASKS = [
    "Write a Python function that checks whether a string is a palindrome, ignoring "
    "punctuation and case.",
    "Write a Python function that merges overlapping intervals given as (start, end) tuples.",
    "Write a Python function that parses a duration like '1h30m15s' into seconds.",
    "Write a Python script that prints the 10 most common words in a text file.",
    "Write a Python helper that retries an HTTP GET with exponential backoff and jitter.",
    "Write a function that flattens an arbitrarily nested list in Python, without recursion.",
    "Write a bash one-liner that finds the 5 largest files under the current directory.",
    "Write a SQL query that returns each customer's most recent order, using a window function.",
    "In TypeScript, how do I type a function that accepts either a string or an array of "
    "strings and always returns an array?",
    "Write a Go function that reads a file line by line and counts the lines that contain "
    "the word ERROR.",
    "Write a regular expression that matches ISO 8601 dates like 2024-03-15 and explain it.",
    "Write a Dockerfile for a small FastAPI app that runs as a non-root user.",
]

SNIPPETS = [
    (
        "Why does this raise `TypeError: 'NoneType' object is not subscriptable`?",
        "def load(path):\n"
        "    with open(path) as f:\n"
        "        data = json.load(f)\n"
        "    data.sort(key=lambda r: r['ts'])\n"
        "\n"
        "rows = load('events.json')\n"
        "print(rows[0])\n",
    ),
    (
        "This loop never finishes. What am I doing wrong?",
        """\
i = 0
while i < 10:
    if i % 2 == 0:
        continue
    print(i)
    i += 1
""",
    ),
    (
        "Can you review this function and suggest improvements? It feels slow on big inputs.",
        "def dedupe(items):\n"
        "    result = []\n"
        "    for item in items:\n"
        "        if item not in result:\n"
        "            result.append(item)\n"
        "    return result\n"
        "\n"
        "def top_users(events):\n"
        "    counts = {}\n"
        "    for e in events:\n"
        "        counts[e['user']] = counts.get(e['user'], 0) + 1\n"
        "    users = dedupe([e['user'] for e in events])\n"
        "    users.sort(key=lambda u: -counts[u])\n"
        "    return users[:10]\n",
    ),
    (
        "My unit test passes alone but fails when the whole suite runs. Any idea why?",
        "CACHE = {}\n"
        "\n"
        "def get_config(name):\n"
        "    if name not in CACHE:\n"
        "        CACHE[name] = read_config_file(name)\n"
        "    return CACHE[name]\n"
        "\n"
        "def test_override(tmp_path, monkeypatch):\n"
        "    monkeypatch.setenv('CONFIG_DIR', str(tmp_path))\n"
        "    (tmp_path / 'app.toml').write_text('debug = true')\n"
        "    assert get_config('app')['debug'] is True\n",
    ),
]

# Themed sentences; a document is a run of consecutive sentences from one theme, so it
# reads as one text and its length is set by how many are taken.
DOCUMENTS = {
    "incident": [
        "At 09:12 UTC the checkout service began returning HTTP 503 errors for about 30% of "
        "requests.",
        "The on-call engineer was paged four minutes later by the error-rate alert.",
        "Initial investigation pointed at the database, but its CPU and connection counts were "
        "normal.",
        "The real cause was a configuration change that lowered the connection pool size from "
        "50 to 5 during a routine deploy.",
        "Under the morning traffic peak, requests queued for a connection and timed out at the "
        "load balancer.",
        "Rolling back the deploy at 09:41 restored normal error rates within two minutes.",
        "Roughly 4,000 customers saw a failed checkout, and about a quarter of them retried "
        "successfully.",
        "We are adding a validation step that rejects pool sizes below 20 in production configs.",
        "We will also alert on connection wait time, which would have pointed at the pool "
        "directly.",
        "No data was lost and no payments were charged twice.",
    ],
    "meeting": [
        "Attendees: Priya, Marco, Jun, and Alex from the platform team.",
        "Marco reported that the migration to the new build system is 70% done; the remaining "
        "work is the mobile apps.",
        "Jun raised that CI times went up from 12 to 19 minutes after the last dependency bump.",
        "The group agreed to cache the dependency layer and to split the integration tests into "
        "four shards.",
        "Priya asked whether we still need the nightly full build now that every merge runs the "
        "whole suite.",
        "Nobody could name a bug the nightly build caught in the last quarter, so it will be "
        "turned off for a two week trial.",
        "Alex will write a short proposal for moving secrets out of environment files and into "
        "the vault.",
        "The next release is planned for the 14th, with a code freeze two days before.",
        "Action items: Jun owns the CI caching, Marco the mobile migration, Alex the secrets "
        "proposal.",
    ],
    "product": [
        "Today we are launching shared workspaces, our most requested feature this year.",
        "A workspace lets a team keep documents, dashboards and alerts in one place with shared "
        "permissions.",
        "Owners can invite members by email or sync membership from an identity provider.",
        "Every change inside a workspace is recorded in an audit log that admins can export.",
        "Workspaces are available on the Team and Enterprise plans at no extra cost.",
        "Existing personal projects can be moved into a workspace in two clicks, keeping their "
        "history.",
        "During the beta, forty companies created more than nine hundred workspaces.",
        "Beta users told us the biggest win was no longer forwarding dashboards over chat.",
        "Next quarter we plan to add workspace templates and per-workspace billing.",
    ],
    "research": [
        "Large language model serving is often limited by memory bandwidth rather than compute.",
        "During decoding, each generated token requires reading the full model weights and the "
        "growing key-value cache.",
        "Batching many requests together amortises the weight reads but increases the cache "
        "footprint.",
        "Paged attention stores the cache in fixed-size blocks, which reduces fragmentation and "
        "lets more sequences fit.",
        "Prefix caching reuses blocks for prompts that share a beginning, such as a common "
        "system prompt.",
        "In our experiments, prefix caching cut time to first token by 45% on a retrieval "
        "workload.",
        "Chunked prefill splits long prompts so they can be scheduled alongside decoding requests.",
        "This smooths inter-token latency at the cost of a slightly longer time to first token.",
        "We find that the best configuration depends strongly on the prompt length distribution.",
    ],
}

SUMMARY_ASKS = [
    "Summarise this for a busy engineer in three bullet points:",
    "Can you give me a two sentence summary of the following?",
    "TL;DR please:",
    "Summarise the key decisions and action items below.",
    "What are the main points of this text?",
]

DRAFTS = [
    "hey, the report you sent is wrong again, the numbers for march dont match the dashboard. "
    "can you fix it before the meeting tomorrow, this keeps happening",
    "We regret to inform you that your application has not been successful at this time. We "
    "received many applications.",
    "Hi team, just a reminder that the office will be closed on Friday. Please make sure you "
    "have what you need to work from home, and dont forget to water the plants on thursday.",
    "I think we should maybe consider possibly looking into whether the new vendor might be "
    "able to potentially reduce costs, if that makes sense.",
    "The function is slow because it loops over everything twice and also it builds a list it "
    "doesnt need and also the sort happens inside the loop which is bad.",
    "Thanks for the interview yesterday. I enjoyed talking about the data platform and I am "
    "still very interested in the role. Let me know if you need anything else from me.",
]

REWRITE_ASKS = [
    "Rewrite this to sound more polite:",
    "Make this more concise:",
    "Fix the grammar and punctuation:",
    "Rewrite this so a non-technical manager would understand it:",
    "Make this sound warmer and more personal:",
]

OTHER_TASKS = [
    "Give me five ideas for a team offsite that doesn't involve drinking.",
    "Draft a short email to my landlord asking when the heating will be fixed.",
    "Translate into French: 'The meeting has been moved to Thursday at 3 pm.'",
    "Translate into Spanish: where is the nearest train station?",
    "Write a haiku about a server that never goes down.",
    "Suggest a name for a command line tool that benchmarks web servers.",
    "Plan a three day itinerary for Lisbon on a small budget.",
    "Give me a 20 minute bodyweight workout I can do in a hotel room.",
    "Write a friendly two line birthday message for a coworker.",
    "List the steps to set up SSH keys for GitHub on a new laptop.",
    "Create a simple weekly meal plan for a vegetarian who hates mushrooms.",
    "Explain recursion to a ten year old.",
]

SYSTEM_PROMPT = """\
You are the support assistant for Northwind Cloud, a hosting company for small businesses.
Answer the customer's question using only the policies below. Be brief, friendly and exact.

Plans. Starter costs 9 dollars a month and includes one website, 10 GB of storage and email
support. Business costs 29 dollars a month and includes ten websites, 100 GB of storage, daily
backups and chat support. Enterprise is priced per contract and adds a named account manager.
Annual billing gives two months free on every plan.

Billing. Invoices are issued on the first day of each billing period. Cards are charged
automatically; a failed payment is retried after 3 and 7 days. After 14 days unpaid, sites are
paused but data is kept for 30 more days.

Refunds. New customers can cancel within 30 days for a full refund. Annual plans cancelled
later get a prorated refund for whole unused months. Domain fees are never refunded.

Outages. The uptime target is 99.9% per month. If we miss it, customers can claim a credit of
10% of the monthly fee for each full hour of downtime beyond the target, up to 50%. Claims must
be made within 30 days through the billing page.

Security. We never ask for passwords by email or chat. Two-factor authentication can be
enabled under Account, Security. Lost 2FA devices are reset only after identity verification.

Style. If a question is outside these policies, say you will pass it to a human agent.
"""

SUPPORT_QUESTIONS = [
    "How much is the Business plan if I pay yearly?",
    "I bought an annual Starter plan 3 weeks ago. Can I still get my money back?",
    "My card expired and the payment failed. What happens to my site?",
    "Can I get a refund for the domain I registered last month?",
    "How do I turn on two-factor authentication?",
    "You were down for 5 hours last month. What credit do I get?",
    "Do you offer phone support on the Starter plan?",
    "Someone emailed me asking for my password to fix my account. Is that you?",
    "How many websites can I host on Business?",
    "I lost my phone with my 2FA app. How do I get back in?",
    "What is included in Enterprise?",
    "When will I be charged for my monthly plan?",
    "Can I upgrade from Starter to Business in the middle of a month?",
    "How long do you keep my data after my site is paused?",
    "Do you back up Starter sites?",
    "I cancelled my annual Business plan after 5 months. How much do I get back?",
    "Where do I claim an outage credit?",
    "What is your uptime guarantee?",
    "Can I pay by bank transfer instead of card?",
    "Is there a free trial?",
    "How much storage do I get on Starter?",
    "I was charged twice this month. What should I do?",
    "Can you recommend a WordPress theme for a bakery?",
    "Do you offer discounts for non-profits?",
    "My payment failed 10 days ago. Is my site still online?",
    "What is the maximum outage credit I can get?",
    "Can I move my site to another host if I leave?",
    "Is chat support available on every plan?",
    "How do I get a named account manager?",
    "I missed the 30 day window for an outage claim. Can I still claim?",
    "Are domain fees included in the plan price?",
    "What happens on day 14 if I still have not paid?",
    "Can I have 15 websites on one plan?",
    "Do annual plans renew automatically?",
    "How do I delete my account and all my data?",
    "Why was my site paused?",
    "How many days do I have to cancel for a full refund?",
    "Can support reset my 2FA over chat right now?",
    "What does daily backups mean for restoring a deleted page?",
    "Is there a cheaper plan than Starter?",
]

# (prompt, reference): short, unambiguous answers that a real model gets right.
FACTS = [
    ("What is the capital of Japan? Answer with one word.", "Tokyo"),
    ("What is the capital of Canada? Answer with one word.", "Ottawa"),
    ("What is the chemical symbol for gold? Answer with the symbol only.", "Au"),
    ("How many days are in a leap year? Answer with the number only.", "366"),
    ("Which planet is known as the Red Planet? Answer with one word.", "Mars"),
    ("What is the largest ocean on Earth? Answer with one word.", "Pacific"),
    ("How many sides does a hexagon have? Answer with the number only.", "6"),
    ("What gas do plants absorb from the air? Answer with the name only.", "carbon dioxide"),
    ("Who wrote 'Romeo and Juliet'? Answer with the surname only.", "Shakespeare"),
    ("What is the boiling point of water at sea level in Celsius? Number only.", "100"),
    ("In which continent is Kenya? Answer with one word.", "Africa"),
    ("What is the freezing point of water in Fahrenheit? Answer with the number only.", "32"),
]

# --- builders -------------------------------------------------------------------------------


def _pick_tokens(rng: random.Random, choices: list[int], weights: list[float]) -> int:
    return rng.choices(choices, weights=weights, k=1)[0]


def _document(rng: random.Random, sentences: int) -> str:
    theme = rng.choice(sorted(DOCUMENTS))
    pool = DOCUMENTS[theme]
    sentences = min(sentences, len(pool))
    start = rng.randrange(len(pool) - sentences + 1)
    return " ".join(pool[start : start + sentences])


def _chat_prompt(rng: random.Random, task: str) -> str:
    if task == "question":
        return rng.choice(QUESTIONS)
    if task == "coding":
        return rng.choice(CODING_TASKS)
    if task == "debugging":
        ask, code = rng.choice(SNIPPETS)
        return f"{ask}\n\n```python\n{code}```"
    if task == "summarisation":
        return f"{rng.choice(SUMMARY_ASKS)}\n\n{_document(rng, rng.randint(3, 8))}"
    if task == "rewriting":
        return f"{rng.choice(REWRITE_ASKS)}\n\n{rng.choice(DRAFTS)}"
    return rng.choice(OTHER_TASKS)


# Real chat traffic: mostly short questions and requests, fewer long pasted texts.
CHAT_TASKS = ["question", "coding", "debugging", "summarisation", "rewriting", "other"]
CHAT_TASK_WEIGHTS = [0.30, 0.17, 0.08, 0.15, 0.12, 0.18]
# Output lengths skewed short, as in chat logs; code and summaries run longer.
CHAT_OUTPUTS = [16, 24, 32, 48, 64, 96, 128, 192, 256]
CHAT_OUTPUT_WEIGHTS = [0.14, 0.14, 0.16, 0.14, 0.14, 0.10, 0.08, 0.06, 0.04]
LONG_TASKS = {"coding", "debugging"}
LONG_OUTPUTS = [96, 128, 192, 256]
LONG_OUTPUT_WEIGHTS = [0.4, 0.3, 0.2, 0.1]


def make_chat(rng: random.Random, n: int = 50) -> list[Request]:
    requests: list[Request] = []
    seen: set[str] = set()
    while len(requests) < n:
        task = rng.choices(CHAT_TASKS, weights=CHAT_TASK_WEIGHTS, k=1)[0]
        prompt = _chat_prompt(rng, task)
        if prompt in seen:  # distinct prompts, so prefix caching does not flatter this one
            continue
        seen.add(prompt)
        if task in LONG_TASKS:
            tokens = _pick_tokens(rng, LONG_OUTPUTS, LONG_OUTPUT_WEIGHTS)
        else:
            tokens = _pick_tokens(rng, CHAT_OUTPUTS, CHAT_OUTPUT_WEIGHTS)
        requests.append(
            {
                "id": f"chat-{len(requests) + 1:03d}",
                "prompt": prompt,
                "expected_output_tokens": tokens,
                "metadata": {"task": task},
            }
        )
    return requests


def make_shared_prefix(rng: random.Random) -> list[Request]:
    questions = list(SUPPORT_QUESTIONS)
    rng.shuffle(questions)
    return [
        {
            "id": f"shared-prefix-{i:03d}",
            "prompt": f"{SYSTEM_PROMPT}\nCustomer: {question}\nAssistant:",
            "expected_output_tokens": rng.choice([16, 24, 32, 48, 64]),
            "metadata": {"task": "support"},
        }
        for i, question in enumerate(questions, start=1)
    ]


def make_bursty(
    rng: random.Random, bursts: int = 4, per_burst: int = 12, gap_s: float = 1.5
) -> list[Request]:
    """Bursts of requests arriving together (a batch job or a page fan-out), then quiet."""
    pool = QUESTIONS + CODING_TASKS + OTHER_TASKS
    prompts = rng.sample(pool, bursts * per_burst)
    arrivals = sorted(
        round(b * gap_s + rng.uniform(0.0, 0.12), 3)
        for b in range(bursts)
        for _ in range(per_burst)
    )
    return [
        {
            "id": f"bursty-{i:03d}",
            "prompt": prompt,
            "expected_output_tokens": rng.choice([32, 48, 64, 96, 128]),
            "arrival_offset_s": offset,
            "metadata": {"burst": int(offset // gap_s)},
        }
        for i, (prompt, offset) in enumerate(zip(prompts, arrivals, strict=True), start=1)
    ]


def make_steady(
    rng: random.Random, n: int = 128, tokens: int = 128, name: str = "steady"
) -> list[Request]:
    """Many users asking at once, every answer the same length: a steady load for A/B gates.

    Equal output lengths make a closed-loop repeat end in one last wave instead of a few long
    requests draining alone, which is what made chat's throughput swing from run to run.
    Prompts are distinct (question + a distinct excerpt), so prefix caching does not flatter.
    """
    pool = QUESTIONS + CODING_TASKS + OTHER_TASKS
    requests: list[Request] = []
    seen: set[str] = set()
    while len(requests) < n:
        prompt = f"{rng.choice(pool)}\n\nContext: {_document(rng, rng.randint(1, 3))}"
        if prompt in seen:
            continue
        seen.add(prompt)
        requests.append(
            {
                "id": f"{name}-{len(requests) + 1:03d}",
                "prompt": prompt,
                "expected_output_tokens": tokens,
                "metadata": {"task": name},
            }
        )
    return requests


def make_crowd(rng: random.Random) -> list[Request]:
    """A crowd: 256 distinct questions, every answer 128 tokens, for 64 users at once.

    The tuning landscape of the CPU recipe: with 64 users waiting, the batch cap
    (``max_num_seqs``) decides how many are served per step and how long the rest queue,
    so serving settings move throughput and TTFT far beyond the noise of a 2-core host.
    """
    return make_steady(rng, n=256, tokens=128, name="crowd")


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        word, result = "*", a * b
    elif op == "+":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        word, result = "+", a + b
    else:
        a = rng.randint(50, 99)
        b = rng.randint(10, a - 1)
        word, result = "-", a - b
    return f"What is {a} {word} {b}? Answer with the number only.", str(result)


def make_accuracy(rng: random.Random, n: int = 24) -> list[Request]:
    items = [(prompt, answer, "fact") for prompt, answer in FACTS]
    prompts = {p for p, _ in FACTS}
    while len(items) < n:
        prompt, answer = _arithmetic(rng)
        if prompt not in prompts:
            prompts.add(prompt)
            items.append((prompt, answer, "arithmetic"))
    rng.shuffle(items)
    return [
        {
            "id": f"accuracy-{i:03d}",
            "prompt": prompt,
            "expected_output_tokens": rng.choice([8, 12, 16]),
            "reference": reference,
            "metadata": {"task": task},
        }
        for i, (prompt, reference, task) in enumerate(items, start=1)
    ]


BUILDERS: dict[str, Callable[[random.Random], list[Request]]] = {
    "chat": make_chat,
    "shared-prefix": make_shared_prefix,
    "bursty": make_bursty,
    "accuracy": make_accuracy,
    "steady": make_steady,
    "crowd": make_crowd,
}


def _check_budget(name: str, requests: list[Request]) -> int:
    worst = 0
    for r in requests:
        tokens = int(len(str(r["prompt"])) / WORST_CHARS_PER_TOKEN) + int(
            str(r["expected_output_tokens"])
        )
        worst = max(worst, tokens)
    if worst >= TOKEN_BUDGET:
        raise SystemExit(f"{name}: a request may need {worst} tokens (budget {TOKEN_BUDGET})")
    return worst


def main(out_dir: Path = HERE) -> int:
    for name, build in BUILDERS.items():
        # One generator per workload: editing one builder leaves the other files unchanged.
        rng = random.Random(f"{SEED}-{name}")
        requests = build(rng)
        worst = _check_budget(name, requests)
        lines = [json.dumps(r, ensure_ascii=False) for r in requests]
        (out_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name}.jsonl: {len(requests)} requests, worst case ~{worst} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
