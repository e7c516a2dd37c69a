"""Generate the demo preference dataset shipped in ``src/slimepo/data/demo``.

Each row is an everyday request plus one verifiable constraint from
``slimepo.constraints``, a ``chosen`` answer that obeys the constraint and a ``rejected``
answer giving the same advice with the constraint broken (capital letters, one bullet too
many, the wrong closing phrase, commas, ...), so that a small model can learn the
preference. Answers are assembled from the template pieces below. Every pair is checked
with ``slimepo.constraints.check`` before anything is written, and the output depends
only on ``--seed``: running the script twice gives byte-identical files.

    python scripts/make_demo_data.py [--seed 0] [--out src/slimepo/data/demo]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from statistics import mean

from slimepo.constraints import FAMILIES, Constraint, check, count_words, instruction

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "slimepo" / "data" / "demo"
TRAIN_PER_FAMILY = 31  # rows per family; 13 families -> 403 train rows
TEST_PER_FAMILY = 8  # -> 104 test rows
RESPONSE_WORDS = (15, 60)  # every chosen and rejected answer has this many words
MAX_PROMPT_WORDS = 45
ATTEMPTS = 50  # re-draws of a pair's template pieces before giving up

# topic -> (request, tips). Tips are comma-free clauses starting in lowercase, so that
# one piece of advice can be rendered as prose, bullets, JSON, capitals, ...
ADVICE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "cooking": (
        (
            "How do I keep rice from turning mushy when I cook it?",
            (
                "rinse the rice until the water runs clear",
                "use a little less water than the package suggests",
                "keep the lid on while it simmers",
                "let the pot rest for ten minutes off the heat",
                "fluff the grains gently with a fork",
            ),
        ),
        (
            "What can I cook on busy weeknights that is quick and healthy?",
            (
                "keep frozen vegetables on hand for fast stir fries",
                "cook a big batch of grains on the weekend",
                "roast chicken and vegetables together on one tray",
                "turn leftover rice into a simple egg fried rice",
                "stock up on canned beans for quick soups",
            ),
        ),
        (
            "How can I make my homemade soup taste better?",
            (
                "brown the onions slowly before adding any liquid",
                "use a good stock instead of plain water",
                "add a squeeze of lemon right before serving",
                "season in small steps and taste as you go",
                "finish with fresh herbs for a bright flavor",
            ),
        ),
        (
            "Any tips for keeping my kitchen knife sharp?",
            (
                "hone the blade on a steel before each use",
                "cut on a wooden or plastic board",
                "wash the knife by hand and dry it right away",
                "store it in a block or on a magnetic strip",
                "have it sharpened properly once or twice a year",
            ),
        ),
    ),
    "travel": (
        (
            "How do I pack light for a week-long trip?",
            (
                "choose clothes that mix and match in one color scheme",
                "roll your clothes to save space",
                "wear your bulkiest shoes on the plane",
                "bring travel sizes of your toiletries",
                "plan one small load of laundry midweek",
            ),
        ),
        (
            "How can I beat jet lag after a long flight?",
            (
                "shift your sleep schedule a few days before you leave",
                "drink plenty of water during the flight",
                "get outside in daylight when you arrive",
                "avoid long naps on the first day",
                "eat your meals at local times right away",
            ),
        ),
        (
            "How do I find cheap flights?",
            (
                "compare prices on a few booking sites",
                "stay flexible with your travel dates",
                "set price alerts for the routes you want",
                "check nearby airports as well",
                "book about two months ahead for most trips",
            ),
        ),
        (
            "How do I stay safe when traveling alone?",
            (
                "share your plans with someone back home",
                "keep copies of your documents in your email",
                "choose places to stay with good reviews",
                "trust your instincts if something feels off",
                "keep your phone charged when you head out",
            ),
        ),
    ),
    "studying": (
        (
            "How can I study more effectively for exams?",
            (
                "test yourself instead of rereading your notes",
                "spread your review over several days",
                "study in short focused blocks with breaks",
                "explain the ideas out loud to a friend",
                "sleep well the night before the exam",
            ),
        ),
        (
            "How do I stop procrastinating on homework?",
            (
                "break each task into tiny first steps",
                "set a timer for twenty-five minutes and begin",
                "put your phone in another room",
                "work at the same desk every day",
                "reward yourself when you finish a task",
            ),
        ),
        (
            "What is a good way to take notes in class?",
            (
                "write key ideas in your own words",
                "leave space to add questions later",
                "use headings to group related points",
                "review your notes within a day",
                "mark anything you do not understand",
            ),
        ),
        (
            "How can I remember vocabulary in a new language?",
            (
                "use flashcards with spaced repetition",
                "learn words inside short phrases",
                "say each new word out loud",
                "review a few words every morning",
                "use new words in simple sentences of your own",
            ),
        ),
    ),
    "pets": (
        (
            "How do I help my new puppy settle in at home?",
            (
                "give the puppy a quiet corner with a soft bed",
                "keep meals and walks at the same times each day",
                "take it outside often for potty breaks",
                "reward calm behavior with small treats",
                "let it explore one room at a time",
            ),
        ),
        (
            "How can I keep my indoor cat happy and active?",
            (
                "play with a wand toy for ten minutes twice a day",
                "give your cat a tall scratching post",
                "put a perch near a sunny window",
                "hide treats around the house for it to hunt",
                "rotate the toys so they stay interesting",
            ),
        ),
        (
            "What should I know before adopting a rabbit?",
            (
                "rabbits need plenty of fresh hay every day",
                "give them room to hop and stretch",
                "cover cables and furniture legs they could chew",
                "find a vet who treats small animals",
                "expect a rabbit to live ten years or more",
            ),
        ),
        (
            "How do I get my dog to stop pulling on the leash?",
            (
                "stop walking whenever the leash goes tight",
                "reward your dog for walking at your side",
                "keep early training walks short",
                "use a harness that clips at the chest",
                "start in a quiet place before busy streets",
            ),
        ),
    ),
    "gardening": (
        (
            "How do I start a small vegetable garden?",
            (
                "pick a spot with six hours of sun",
                "start with easy crops like lettuce and beans",
                "mix compost into the soil before planting",
                "water deeply a few times a week",
                "begin with one small bed you can manage",
            ),
        ),
        (
            "How can I keep my houseplants alive?",
            (
                "check the soil with a finger before watering",
                "use pots with drainage holes",
                "match each plant to the light in your room",
                "wipe dust off the leaves now and then",
                "feed them lightly in spring and summer",
            ),
        ),
        (
            "How do I grow herbs on a windowsill?",
            (
                "choose a bright window with morning sun",
                "start with basil or mint or parsley",
                "water when the top of the soil feels dry",
                "pinch off the tips to keep the plants bushy",
                "turn the pots every few days",
            ),
        ),
        (
            "What is the easiest way to start composting?",
            (
                "get a bin with a lid for the yard",
                "mix green scraps with dry leaves or paper",
                "keep the pile about as damp as a sponge",
                "turn it with a fork every week or two",
                "leave out meat and dairy to avoid smells",
            ),
        ),
    ),
    "exercise": (
        (
            "How do I start running as a complete beginner?",
            (
                "alternate one minute of running with two of walking",
                "run three times a week at an easy pace",
                "go slow enough that you can still talk",
                "get shoes that fit well at a running store",
                "add a little more time each week",
            ),
        ),
        (
            "What is a simple workout I can do at home with no equipment?",
            (
                "do squats and lunges for your legs",
                "add push-ups against a wall or on the floor",
                "hold a plank for thirty seconds",
                "finish with a few minutes of stretching",
                "repeat the circuit two or three times",
            ),
        ),
        (
            "How can I stay motivated to exercise regularly?",
            (
                "schedule workouts like any other appointment",
                "find a friend to train with",
                "pick activities you enjoy doing",
                "set a small goal for each month",
                "lay out your gear the night before",
            ),
        ),
        (
            "How do I improve my flexibility?",
            (
                "stretch after workouts while your muscles are warm",
                "hold each stretch for about thirty seconds",
                "breathe slowly and relax into each position",
                "try a beginner yoga class once a week",
                "stretch a little on most days rather than a lot once",
            ),
        ),
    ),
    "money": (
        (
            "How do I start saving money each month?",
            (
                "move money to savings on the day you get paid",
                "track your spending for one month",
                "cancel subscriptions you do not use",
                "cook at home more often",
                "set a clear goal for what you are saving for",
            ),
        ),
        (
            "How can I make a simple monthly budget?",
            (
                "list your income after taxes",
                "write down your fixed bills first",
                "set limits for food and fun spending",
                "review the numbers at the end of each month",
                "keep a small buffer for surprises",
            ),
        ),
        (
            "How do I pay off credit card debt faster?",
            (
                "pay more than the minimum every month",
                "focus on the card with the highest interest first",
                "stop using the cards while you pay them down",
                "ask your bank for a lower rate",
                "put any extra income toward the balance",
            ),
        ),
        (
            "What are easy ways to cut my grocery bill?",
            (
                "plan meals for the week before you shop",
                "shop with a list and stick to it",
                "buy store brands for the basics",
                "use up leftovers before buying more",
                "buy fruit and vegetables that are in season",
            ),
        ),
    ),
    "tech": (
        (
            "How can I make my old laptop run faster?",
            (
                "uninstall programs you no longer use",
                "limit the apps that launch at startup",
                "free up space on the hard drive",
                "keep the system and drivers updated",
                "consider swapping in a solid state drive",
            ),
        ),
        (
            "How do I create strong passwords I can remember?",
            (
                "use a passphrase of four random words",
                "use a different password for each account",
                "store them in a password manager",
                "turn on two-factor login where you can",
                "avoid names and birthdays",
            ),
        ),
        (
            "How do I back up the photos on my phone?",
            (
                "turn on automatic cloud backup",
                "copy your photos to a computer every month",
                "keep a second copy on an external drive",
                "check that the backup finished after big trips",
                "delete blurry shots to save space",
            ),
        ),
        (
            "How can I spend less time on my phone?",
            (
                "turn off notifications you do not need",
                "move social apps off your home screen",
                "set daily time limits in your settings",
                "charge your phone outside the bedroom",
                "keep a book handy for idle moments",
            ),
        ),
    ),
    "sleep": (
        (
            "How can I fall asleep faster at night?",
            (
                "go to bed at the same time each night",
                "dim the lights an hour before bed",
                "keep screens out of the bedroom",
                "keep the room cool and dark",
                "write down your worries before you lie down",
            ),
        ),
        (
            "How do I stop waking up tired?",
            (
                "aim for seven to nine hours of sleep",
                "skip caffeine after lunch",
                "get morning sunlight soon after you wake",
                "avoid hitting the snooze button",
                "keep your wake time steady on weekends",
            ),
        ),
        (
            "What can I do about my afternoon energy slump?",
            (
                "take a short walk after lunch",
                "eat a lunch with protein and fiber",
                "drink a glass of water",
                "keep naps to twenty minutes at most",
                "step away from your screen for a few minutes",
            ),
        ),
        (
            "How should I set up my bedroom for better sleep?",
            (
                "use blackout curtains to block light",
                "choose a comfortable pillow and mattress",
                "keep clutter out of sight",
                "use a fan or white noise for steady sound",
                "save the bed for sleep and rest",
            ),
        ),
    ),
    "home": (
        (
            "How do I keep my apartment tidy without much effort?",
            (
                "spend ten minutes tidying each evening",
                "put things back right after you use them",
                "keep a basket for clutter in each room",
                "wipe the kitchen counters after dinner",
                "do one load of laundry every other day",
            ),
        ),
        (
            "What is the best way to clean a messy fridge?",
            (
                "take everything out and toss expired food",
                "wash the shelves with warm soapy water",
                "wipe up spills as soon as they happen",
                "keep an open box of baking soda inside",
                "group similar foods together on each shelf",
            ),
        ),
        (
            "How can I get rid of clutter in my closet?",
            (
                "take out clothes you have not worn in a year",
                "donate items that no longer fit",
                "use matching hangers to save space",
                "store off-season clothes in bins",
                "keep one bag ready for donations",
            ),
        ),
        (
            "How do I remove stains from clothes?",
            (
                "treat the stain as soon as possible",
                "blot the spot instead of rubbing it",
                "use cold water for blood and wine",
                "rub a little dish soap into greasy spots",
                "make sure the stain is gone before drying",
            ),
        ),
    ),
    "work": (
        (
            "How can I be more productive when working from home?",
            (
                "set up a dedicated spot for work",
                "start at the same time each morning",
                "write a short list of top tasks each day",
                "take real breaks away from your desk",
                "close work apps at the end of the day",
            ),
        ),
        (
            "How do I prepare for a job interview?",
            (
                "research the company and its products",
                "rehearse answers to common questions out loud",
                "prepare two or three questions to ask",
                "plan your outfit and route the day before",
                "bring extra copies of your resume",
            ),
        ),
        (
            "How can I run better meetings?",
            (
                "share a clear agenda in advance",
                "invite only the people who need to be there",
                "start and end on time",
                "assign an owner to each action item",
                "send a short summary afterward",
            ),
        ),
        (
            "How do I write a clear work email?",
            (
                "put the main point in the first line",
                "use a specific subject line",
                "keep paragraphs short",
                "state the action you need and the deadline",
                "read it once more before you hit send",
            ),
        ),
    ),
    "hobbies": (
        (
            "How can I read more books this year?",
            (
                "carry a book or e-reader with you",
                "read for twenty minutes before bed",
                "drop books that do not grab you",
                "join a book club for fresh picks",
                "keep a list of books you want to read next",
            ),
        ),
        (
            "How do I start learning to play guitar?",
            (
                "learn a few basic chords first",
                "play for fifteen minutes each day",
                "keep your guitar out where you can see it",
                "learn songs you love to stay motivated",
                "tune up before every session",
            ),
        ),
        (
            "How do I get better at drawing?",
            (
                "sketch something from life every day",
                "draw simple shapes to build control",
                "copy the work of artists you admire",
                "keep a small sketchbook in your bag",
                "focus on seeing shapes rather than things",
            ),
        ),
        (
            "How can I take better photos with my phone?",
            (
                "clean the camera lens before shooting",
                "use natural light whenever you can",
                "tap the screen to set the focus",
                "follow the rule of thirds for balance",
                "get closer instead of zooming in",
            ),
        ),
    ),
}

PROMPT_OPENERS = ("", "", "", "Quick question. ", "Hi! ", "I could use some advice. ")
INTROS = (
    "Here are a few things that help.",
    "A few small changes make a big difference.",
    "This is easier than it looks.",
    "Here is what tends to work.",
    "Good news: this is easy to improve.",
    "A few simple steps will get you there.",
    "Most people get good results with these ideas.",
    "Try these ideas.",
)
CLOSERS = (
    "Give it a week and see what changes.",
    "Small steps add up over time.",
    "Start with one idea and build from there.",
    "Pick the ideas that fit your life best.",
    "You will notice the difference soon.",
)
JSON_KEYS = ("tips", "steps", "ideas", "advice", "suggestions")
END_PHRASES = (
    "Hope this helps!",
    "Good luck!",
    "Let me know how it goes.",
    "Enjoy!",
    "Happy to help.",
    "Have fun with it!",
)
# first word -> opening line that starts with it
OPENERS = {
    "Sure": "Sure!",
    "Absolutely": "Absolutely!",
    "Okay": "Okay.",
    "Yes": "Yes!",
    "Great": "Great question!",
    "Good": "Good question!",
    "Happy": "Happy to help!",
}
# word -> (closing line using it, the same line without it)
WORD_LINES = {
    "patience": ("A little patience goes a long way.", "Give it a little time."),
    "routine": ("Building a routine makes it stick.", "Repeating it daily makes it stick."),
    "progress": ("Keep track of your progress as you go.", "Keep notes as you go."),
    "plan": ("Make a simple plan before you start.", "Think it through before you start."),
    "consistency": (
        "Consistency matters more than effort.",
        "Showing up matters more than effort.",
    ),
    "practice": ("Practice makes it feel natural.", "Repetition makes it feel natural."),
    "habit": ("Turn it into a habit and it gets easier.", "Do it often and it gets easier."),
    "really": ("It really does get easier.", "It does get easier."),
    "just": ("Just start small.", "Start small."),
    "very": ("This is a very common problem.", "This is a common problem."),
    "always": ("You can always adjust as you go.", "You can adjust as you go."),
    "definitely": ("You will definitely see results.", "You will see results."),
    "actually": ("It is actually simpler than it sounds.", "It is simpler than it sounds."),
}
INCLUDE_WORDS = ("patience", "routine", "progress", "plan", "consistency", "practice", "habit")
AVOID_WORDS = ("really", "just", "very", "always", "definitely", "actually")


@dataclass(frozen=True)
class Advice:
    topic: str
    request: str
    tips: tuple[str, ...]


Pair = tuple[Constraint, str, str]  # constraint, chosen, rejected


# --- rendering one piece of advice ----------------------------------------------------


def _sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + "."


def _tips(rng: random.Random, advice: Advice, k: int) -> list[str]:
    return [_sentence(tip) for tip in rng.sample(advice.tips, k)]


def _answer(rng: random.Random, advice: Advice, k: int, closer: bool = True) -> list[str]:
    """Sentences of a prose answer: an intro, ``k`` tips, and optionally a closing line."""
    sentences = [rng.choice(INTROS), *_tips(rng, advice, k)]
    if closer:
        sentences.append(rng.choice(CLOSERS))
    return sentences


def _listing(intro: str, items: Sequence[str], markers: Iterable[str]) -> str:
    return "\n".join([intro, *(marker + item for marker, item in zip(markers, items))])


def _paragraphs(sentences: Sequence[str], n: int) -> str:
    """Join ``sentences`` into ``n`` paragraphs of near-equal size."""
    bounds = [round(i * len(sentences) / n) for i in range(n + 1)]
    return "\n\n".join(" ".join(sentences[a:b]) for a, b in zip(bounds, bounds[1:]))


def _run_on(clauses: Sequence[str]) -> str:
    """The clauses as one comma-spliced sentence: "A, then b, and c."."""
    *head, last = clauses
    return _sentence(", then ".join(head) + ", and " + last)


def _json_answer(value: dict[str, list[str]], fenced: bool) -> str:
    text = json.dumps(value, indent=2)
    return f"```json\n{text}\n```" if fenced else text


def _prefix_words(sentences: Sequence[str], k: int) -> int:
    return count_words(" ".join(sentences[:k]))


# --- one builder per family: a constraint, an answer obeying it, the same answer breaking it


def _json_key(rng: random.Random, advice: Advice) -> Pair:
    key, wrong_key = rng.sample(JSON_KEYS, 2)
    tips = _tips(rng, advice, 3)
    fenced = rng.random() < 0.5
    if rng.random() < 0.5:
        rejected = _json_answer({wrong_key: tips}, fenced)
    else:
        rejected = " ".join([rng.choice(INTROS), *tips])
    return Constraint("json_key", {"key": key}), _json_answer({key: tips}, fenced), rejected


def _lowercase(rng: random.Random, advice: Advice) -> Pair:
    text = " ".join(_answer(rng, advice, rng.randint(2, 3)))
    return Constraint("lowercase"), text.lower(), text


def _uppercase(rng: random.Random, advice: Advice) -> Pair:
    text = " ".join(_answer(rng, advice, rng.randint(2, 3)))
    return Constraint("uppercase"), text.upper(), text


def _bullet_count(rng: random.Random, advice: Advice) -> Pair:
    n = rng.randint(2, 4)
    intro, tips = rng.choice(INTROS), _tips(rng, advice, 5)
    wrong = rng.choice((n - 1, n + 1))
    chosen = _listing(intro, tips[:n], repeat("- "))
    return Constraint("bullet_count", {"n": n}), chosen, _listing(intro, tips[:wrong], repeat("- "))


def _numbered_list(rng: random.Random, advice: Advice) -> Pair:
    n = rng.randint(2, 4)
    intro, tips = rng.choice(INTROS), _tips(rng, advice, 5)
    numbers = [f"{i}. " for i in range(1, len(tips) + 1)]
    if rng.random() < 0.5:
        rejected = _listing(intro, tips[:n], repeat("- "))
    else:
        rejected = _listing(intro, tips[: rng.choice((n - 1, n + 1))], numbers)
    return Constraint("numbered_list", {"n": n}), _listing(intro, tips[:n], numbers), rejected


def _max_words(rng: random.Random, advice: Advice) -> Pair:
    n = rng.choice((25, 30, 35))
    sentences = _answer(rng, advice, 5)
    fits = [k for k in range(2, len(sentences) + 1) if _prefix_words(sentences, k) <= n]
    k = max(fits, default=2)
    chosen, rejected = " ".join(sentences[:k]), " ".join(sentences[: k + 2])
    return Constraint("max_words", {"n": n}), chosen, rejected


def _min_words(rng: random.Random, advice: Advice) -> Pair:
    n = rng.choice((30, 35, 40))
    sentences = _answer(rng, advice, 5)
    enough = [k for k in range(2, len(sentences) + 1) if _prefix_words(sentences, k) >= n]
    k = min(enough, default=len(sentences))
    chosen, rejected = " ".join(sentences[:k]), " ".join(sentences[: k - 2])
    return Constraint("min_words", {"n": n}), chosen, rejected


def _include_word(rng: random.Random, advice: Advice) -> Pair:
    word = rng.choice(INCLUDE_WORDS)
    with_word, without_word = WORD_LINES[word]
    body = _answer(rng, advice, rng.randint(2, 3), closer=False)
    chosen, rejected = " ".join([*body, with_word]), " ".join([*body, without_word])
    return Constraint("include_word", {"word": word}), chosen, rejected


def _avoid_word(rng: random.Random, advice: Advice) -> Pair:
    word = rng.choice(AVOID_WORDS)
    with_word, without_word = WORD_LINES[word]
    body = _answer(rng, advice, rng.randint(2, 3), closer=False)
    chosen, rejected = " ".join([*body, without_word]), " ".join([*body, with_word])
    return Constraint("avoid_word", {"word": word}), chosen, rejected


def _end_phrase(rng: random.Random, advice: Advice) -> Pair:
    phrase, other = rng.sample(END_PHRASES, 2)
    body = " ".join(_answer(rng, advice, rng.randint(2, 3), closer=rng.random() < 0.5))
    rejected = body if rng.random() < 0.3 else f"{body} {other}"
    return Constraint("end_phrase", {"phrase": phrase}), f"{body} {phrase}", rejected


def _start_word(rng: random.Random, advice: Advice) -> Pair:
    word, other = rng.sample(tuple(OPENERS), 2)
    body = " ".join(_answer(rng, advice, rng.randint(2, 3)))
    rejected = body if rng.random() < 0.3 else f"{OPENERS[other]} {body}"
    return Constraint("start_word", {"word": word}), f"{OPENERS[word]} {body}", rejected


def _paragraph_count(rng: random.Random, advice: Advice) -> Pair:
    n = rng.choice((2, 3))
    sentences = _answer(rng, advice, rng.randint(3, 4))
    wrong = rng.choice((1, n + 1))
    chosen, rejected = _paragraphs(sentences, n), _paragraphs(sentences, wrong)
    return Constraint("paragraph_count", {"n": n}), chosen, rejected


def _no_commas(rng: random.Random, advice: Advice) -> Pair:
    intro, closer = rng.choice(INTROS), rng.choice(CLOSERS)
    tips = rng.sample(advice.tips, rng.randint(2, 3))
    chosen = " ".join([intro, *map(_sentence, tips), closer])
    return Constraint("no_commas"), chosen, " ".join([intro, _run_on(tips), closer])


BUILDERS: dict[str, Callable[[random.Random, Advice], Pair]] = {
    "json_key": _json_key,
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "bullet_count": _bullet_count,
    "numbered_list": _numbered_list,
    "max_words": _max_words,
    "min_words": _min_words,
    "include_word": _include_word,
    "avoid_word": _avoid_word,
    "end_phrase": _end_phrase,
    "start_word": _start_word,
    "paragraph_count": _paragraph_count,
    "no_commas": _no_commas,
}


# --- assembling and validating the dataset --------------------------------------------


def pair_problem(constraint: Constraint, chosen: str, rejected: str) -> str | None:
    """What makes this pair unfit for the dataset, or None when it is fit."""
    if chosen == rejected:
        return "chosen and rejected are identical"
    result = check(constraint, chosen)
    if not result.passed:
        return f"chosen fails its constraint: {result.detail}"
    if check(constraint, rejected).passed:
        return "rejected passes the constraint"
    low, high = RESPONSE_WORDS
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not low <= count_words(text) <= high:
            return f"{name} has {count_words(text)} words, outside {low}-{high}"
    return None


def _row(rng: random.Random, family: str, advice: Advice) -> dict:
    for _ in range(ATTEMPTS):
        constraint, chosen, rejected = BUILDERS[family](rng, advice)
        if pair_problem(constraint, chosen, rejected) is None:
            prompt = f"{rng.choice(PROMPT_OPENERS)}{advice.request} {instruction(constraint)}"
            return {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "family": family,
                "constraint": constraint.to_dict(),
            }
    raise RuntimeError(f"no valid {family} pair for {advice.request!r} in {ATTEMPTS} draws")


def _split(rng: random.Random, name: str, advice: list[Advice], per_family: int) -> list[dict]:
    rows = [_row(rng, f, item) for f in FAMILIES for item in rng.sample(advice, per_family)]
    rng.shuffle(rows)
    return [{"id": f"{name}-{i:04d}", **row} for i, row in enumerate(rows)]


def validate(splits: dict[str, list[dict]]) -> None:
    """Raise ``AssertionError`` unless every row is a fit pair and the splits are clean."""
    prompts = {name: {row["prompt"] for row in rows} for name, rows in splits.items()}
    shared = prompts["train"] & prompts["test"]
    if shared:
        raise AssertionError(f"{len(shared)} prompts appear in both splits")
    for name, rows in splits.items():
        missing = set(FAMILIES) - {row["family"] for row in rows}
        if missing:
            raise AssertionError(f"{name} split lacks families {sorted(missing)}")
        for row in rows:
            constraint = Constraint.from_dict(row["constraint"])
            problem = pair_problem(constraint, row["chosen"], row["rejected"])
            if problem is None and constraint.family != row["family"]:
                problem = "family field disagrees with the constraint"
            if problem is None and count_words(row["prompt"]) > MAX_PROMPT_WORDS:
                problem = f"prompt longer than {MAX_PROMPT_WORDS} words"
            if problem is not None:
                raise AssertionError(f"{row['id']}: {problem}")


def build_dataset(seed: int) -> dict[str, list[dict]]:
    """The train and test rows for ``seed``. Split by request: one per topic goes to test."""
    rng = random.Random(seed)
    train: list[Advice] = []
    test: list[Advice] = []
    for topic, items in ADVICE.items():
        advice = [Advice(topic, request, tips) for request, tips in items]
        held_out = rng.choice(advice)
        test.append(held_out)
        train.extend(item for item in advice if item is not held_out)
    splits = {
        "train": _split(rng, "train", train, TRAIN_PER_FAMILY),
        "test": _split(rng, "test", test, TEST_PER_FAMILY),
    }
    validate(splits)
    return splits


# --- writing --------------------------------------------------------------------------


def _mean_words(rows: list[dict], field: str) -> str:
    return f"{mean(count_words(row[field]) for row in rows):.1f}"


def data_card(splits: dict[str, list[dict]], seed: int) -> str:
    """The README.md shipped next to the data."""
    train, test = splits["train"], splits["test"]
    family_lines = []
    for family in FAMILIES:
        rows = [row for row in train + test if row["family"] == family]
        n_train = sum(row["family"] == family for row in train)
        family_lines.append(
            f"| `{family}` | {n_train} | {len(rows) - n_train} "
            f"| {_mean_words(rows, 'chosen')} | {_mean_words(rows, 'rejected')} |"
        )
    split_lines = [
        f"| {name} | {len(rows)} | {len({row['prompt'] for row in rows})} "
        f"| {_mean_words(rows, 'prompt')} | {_mean_words(rows, 'chosen')} "
        f"| {_mean_words(rows, 'rejected')} |"
        for name, rows in splits.items()
    ]
    n_requests = sum(len(items) for items in ADVICE.values())
    split_table, family_table = "\n".join(split_lines), "\n".join(family_lines)
    return f"""# slimepo demo preference data

Small synthetic preference pairs for verifiable instruction following. They ship with
`slimepo` so that training and evaluation run out of the box on a CPU with a small model;
they are a smoke test and a demo, not a benchmark.

## How it was made

```
python scripts/make_demo_data.py --seed {seed}
```

The script is deterministic (standard library only) and rerunning it reproduces these
files byte for byte. It holds {n_requests} everyday requests, each with five short tips,
in {len(ADVICE)} topics:
{", ".join(ADVICE)}.

A row's prompt is one request followed by the instruction for one constraint from
`slimepo.constraints`. `chosen` obeys the constraint; `rejected` gives the same advice
with the constraint broken (capital letters, one bullet too many, the wrong closing
phrase, a comma-spliced sentence, a missing or forbidden word, the wrong JSON key, ...).
Before writing, the script checks with `slimepo.constraints.check` that every `chosen`
passes, every `rejected` fails and the two differ.

The split is by request: one request per topic is held out for `test`, so no prompt (and
no request) appears in both splits.

## Fields

One JSON object per line in `train.jsonl` and `test.jsonl`:

- `id`: `train-0000`, `test-0000`, ...
- `prompt`: the request plus the constraint's instruction
- `chosen`, `rejected`: the preferred and dispreferred answers
- `family`: the constraint family
- `constraint`: `{{"family": ..., "params": {{...}}}}`, loadable with
  `slimepo.constraints.Constraint.from_dict`

## Counts and lengths

Words are counted with `slimepo.constraints.count_words`.

| split | rows | distinct prompts | mean prompt words | mean chosen words | mean rejected words |
|---|---|---|---|---|---|
{split_table}

| family | train rows | test rows | mean chosen words | mean rejected words |
|---|---|---|---|---|
{family_table}
"""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate slimepo's demo preference data.")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)"
    )
    args = parser.parse_args(argv)
    splits = build_dataset(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        _write_jsonl(args.out / f"{name}.jsonl", rows)
    (args.out / "README.md").write_text(
        data_card(splits, args.seed), encoding="utf-8", newline="\n"
    )
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in splits.items())
    print(f"wrote {counts} rows to {args.out}")


if __name__ == "__main__":
    main()
