"""Texts the realistic workloads are made of: documents to repeat or fix (``echo``) and the
shared system prompt and user turns of the ``chat`` sessions. Fixed text, so every run and
every server sees the same prompts; variation comes from the request index."""
from __future__ import annotations

import random
import re

DOCUMENTS = (
    """The lighthouse at Saint Brennan's Point was built in 1852 from granite quarried on the
island itself. Its lamp burned whale oil until 1870, then kerosene, and finally electricity
after a cable was laid across the strait in 1931. Three keepers lived in the cottages at its
foot, taking turns through the night to trim the wick, wind the clockwork that turned the
lens, and log every passing ship. In the great storm of 1894 the keepers kept the light
burning for four days without sleep, and the schooner Margaret Ellis found the harbour by its
beam. The station was automated in 1978, and today the cottages house a small museum with
the original logbooks, a brass fog horn and a model of the first-order Fresnel lens.""",
    """def merge_intervals(intervals):
    \"\"\"Merge overlapping intervals and return them sorted by start.\"\"\"
    if not intervals:
        return []
    ordered = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(ordered[0])]
    for start, end in ordered[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return [tuple(pair) for pair in merged]


def total_covered(intervals):
    \"\"\"The total length covered by the intervals, counting overlaps once.\"\"\"
    return sum(end - start for start, end in merge_intervals(intervals))


if __name__ == "__main__":
    sample = [(1, 3), (2, 6), (8, 10), (15, 18), (17, 20)]
    print(merge_intervals(sample))
    print(total_covered(sample))""",
    """To make a sourdough loaf, start the evening before. Mix 100 grams of active starter with
350 grams of water, then add 500 grams of bread flour and 10 grams of salt. Stir until no dry
flour remains, cover the bowl and let it rest for thirty minutes. Over the next two hours,
stretch and fold the dough four times, once every half hour, lifting one side and folding it
over the rest. Shape the dough into a tight ball, place it seam side up in a floured basket
and leave it in the refrigerator overnight. In the morning, heat the oven to 250 degrees with
a covered pot inside. Turn the dough into the pot, score the top with a sharp blade and bake
for twenty minutes covered, then twenty-five minutes uncovered, until the crust is deep brown.
Let the loaf cool for at least an hour before cutting it.""",
    """server:
  host: 0.0.0.0
  port: 8080
  workers: 4
  timeout_seconds: 30
database:
  url: postgresql://app:secret@db.internal:5432/orders
  pool_size: 20
  statement_timeout_ms: 5000
cache:
  backend: redis
  url: redis://cache.internal:6379/0
  default_ttl_seconds: 300
logging:
  level: info
  format: json
  fields: [request_id, user_id, route, status, duration_ms]
features:
  new_checkout: true
  recommendations: false
  beta_users: [alice, bob, carol]""",
    """Minutes of the garden committee, 14 March. Present: Ana, Boris, Chen, Dita and Emil.
Ana reported that the new compost bins are in place behind the tool shed and asked everyone
to keep meat and dairy out of them. Boris presented the budget: 420 euros remain for the
season, of which 150 are set aside for seeds and 100 for repairing the greenhouse door. Chen
proposed a children's planting day on the first Saturday of May; the committee agreed and
Dita offered to make the posters. Emil raised the problem of the leaking rain barrel near the
east beds, and it was decided to replace it rather than patch it again. The next meeting will
be held on 11 April at seven in the evening in the community hall.""",
)

ECHO_INSTRUCTIONS = ("Repeat the document exactly:", "Copy the text above word for word:",
                     "Quote the document in full:", "Fix the typos in the document and write it out again:")

CHAT_SYSTEM_PROMPT = """You are Harbor, the support assistant of Northwind Outfitters, an online shop for
hiking, camping and climbing gear. Follow these rules in every answer.

1. Be friendly, concise and concrete. Prefer short paragraphs or short lists. Never invent
order numbers, prices, stock levels or delivery dates: when you do not know, say so and tell
the customer how to find out.
2. Orders: customers can see their orders under Account, then Orders. An order can be changed
or cancelled within two hours of purchase; after that it is packed and can only be returned.
3. Shipping: standard shipping takes three to five working days and is free above 60 euros;
express shipping takes one to two working days and costs 9 euros. We ship to every country in
the European Union, to Norway, Switzerland and the United Kingdom.
4. Returns: unused items can be returned within 30 days with the prepaid label printed from
the order page. Refunds reach the original payment method within five working days after the
parcel arrives at our warehouse. Worn shoes and opened gas canisters cannot be returned.
5. Warranty: all tents, backpacks and sleeping bags carry a two-year warranty against
manufacturing defects. Ask for photos of the defect and the order number, then open a
warranty case; never promise a replacement before the case is reviewed.
6. Safety: for questions about mountain conditions, avalanche risk or weather, point to the
official local services and never give a go or no-go decision yourself.
7. Payment: we accept cards, PayPal and bank transfer. We cannot see full card numbers, so
never ask for them.
8. Escalation: if a request is outside these rules, offer to hand the conversation to a
human colleague, available on working days from 8:00 to 18:00 Central European Time.

Always end with a short question that helps the customer take the next step."""

CHAT_QUESTIONS = (
    "Hi! I ordered a tent yesterday evening. Can I still change the colour?",
    "How long will standard shipping take to Austria, and is it free?",
    "My sleeping bag's zipper broke after three months. What can I do?",
    "Which size of hiking boots should I pick if I am between two sizes?",
    "Can I return a gas canister I opened by mistake?",
    "Thanks. Could you summarise what I need to do next, in a short list?",
    "Is there a discount if I buy a tent and a backpack together?",
    "Do you ship to Iceland?",
)
CHAT_TURNS = 6


def typos(text: str, seed: int, share: float = 0.08) -> str:
    """``text`` with ``share`` of its words of 5+ letters (at least one, when it has any
    and share > 0) given a swapped pair of letters."""
    words = list(re.finditer(r"(?<![A-Za-z])[A-Za-z]{5,}(?![A-Za-z])", text))
    count = min(len(words), max(1, round(share * len(words)))) if share > 0 else 0
    rng = random.Random(seed)
    out, last = [], 0
    for match in sorted(rng.sample(words, count), key=lambda m: m.start()):
        word = match.group(0)
        at = rng.randrange(1, len(word) - 2)
        out += [text[last:match.start()], word[:at], word[at + 1], word[at], word[at + 2:]]
        last = match.end()
    return "".join(out) + text[last:]


def echo_prompt(index: int) -> str:
    """A document, an instruction to reproduce it, and the reproduction's first line, so even
    a base model continues by copying: outputs that largely repeat the prompt."""
    document = DOCUMENTS[index % len(DOCUMENTS)]
    instruction = ECHO_INSTRUCTIONS[(index // len(DOCUMENTS)) % len(ECHO_INSTRUCTIONS)]
    source = typos(document, index) if instruction.startswith("Fix") else document
    first_line = document.split("\n", 1)[0]
    return f"Document {index}:\n{source}\n\n{instruction}\n{first_line}\n"


def chat_question(session: int, turn: int) -> str:
    """The user's message of one turn; the first names the session, so every conversation
    differs right after the shared system prompt."""
    question = CHAT_QUESTIONS[(session + turn) % len(CHAT_QUESTIONS)]
    return f"(customer #{session}) {question}" if turn == 0 else question
