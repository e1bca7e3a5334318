"""An embedded synthetic "tiny stories" corpus, and an exact recognizer for its sentences.

Nothing is downloaded: stories come from a small hand-written probabilistic grammar and are
deterministic given a seed. A story has 3-8 sentences, each from a template:

    intro    a named child is introduced ("Once upon a time, there was a shy girl named Mia.")
    object   the child gets an object ("She had a red ball.")
    middle   0-5 sentences that refer back to the child (by name, or he/she matching the name) and
             to the object ("the ball"); they may bring in a friend or an animal, and then use them
    ending   ("From that day on, Mia always kept the ball close.")

A template such as "{SUBJ} found {A_ADJ} {THING} {PREP} the {SPOT}." names word classes in braces.
Story slots (the names, the object, its adjective, the animal, the place) are drawn at their first
use and then kept, so later sentences can refer back; the other slots are drawn at every use.
`is_grammatical` compiles the same templates and word lists into regexes, so the recognizer
accepts exactly the sentences the grammar can produce and cannot drift from the generator;
`grammatical_rate` turns it into a sample-quality metric.

No word ever directly follows itself (case and punctuation ignored), neither inside a sentence
nor across a sentence boundary ("... named Tom. Tom had ..."): the generator redraws a story that
would, and the recognizer rejects such a sentence. The Repeat Curse study (arXiv 2601.20520)
measures adjacent repetition in diffusion-LM samples; with a repeat-free corpus, any "the the" in
a sample is the sampler's doing, not the data's.

`load_text_file` and `split_train_val` let a user train on their own UTF-8 text file instead.
"""
import codecs
import functools
import itertools
import os
import random
import re
from collections.abc import Iterable


class CorpusError(ValueError):
    """A user's corpus file that cannot be used: missing, empty, binary or too short."""


# ---- Word lists ---------------------------------------------------------------------------------
NAMES = {
    "girl": ("Mia Lily Emma Anna Sara Lucy Zoe Ella Ava Grace Ruby Chloe Nora Maya Ivy Rosa Amy "
             "Kate Jane Molly Daisy Hannah Julia Nina Olivia Sophie Alice Clara Ellie Leah Tina "
             "Wendy Polly Hazel Iris Luna Stella Fiona Greta Bella").split(),
    "boy": ("Tom Ben Sam Max Leo Jack Tim Finn Noah Liam Jake Owen Eli Luke Adam Theo Oscar Henry "
            "Oliver Peter Paul Dan Joe Ryan Kevin Mark Alex Felix Hugo Jonah Milo Toby Ethan Lucas "
            "Simon Victor Hugh Ned Otto Rex").split(),
}
PRONOUNS = {"girl": {"HE": "she", "HIM": "her", "HIS": "her"},
            "boy": {"HE": "he", "HIM": "him", "HIS": "his"}}

# Story slots besides the two names: drawn once per story, so later sentences can refer back.
STORY_WORDS = {
    "THING": ("ball kite doll box hat book cup key boat car drum bell shell stone flower spoon "
              "sock shoe coat scarf bag basket pillow lamp clock map crayon pencil brush balloon "
              "train truck robot puzzle whistle ribbon ring necklace feather jar bucket shovel "
              "umbrella candle mirror button marble bike wagon crown flag").split(),
    "ADJ": ("red blue green yellow pink purple orange brown black white golden silver shiny tiny "
            "big small old new soft round bright pretty funny magic special striped spotted fluffy "
            "wooden sparkly fancy little").split(),
    "ANIMAL": ("dog cat bird rabbit fox frog duck bear owl mouse horse cow pig sheep goat lion "
               "monkey turtle fish squirrel deer hen puppy kitten bunny pony snail bee butterfly "
               "ladybug hedgehog wolf elephant giraffe penguin seal dolphin parrot goose lamb "
               "tiger zebra crab beaver raccoon").split(),
    "PLACE": ("park garden forest beach lake river farm field hill pond school library market zoo "
              "playground yard meadow village town castle cave barn shop bakery island mountain "
              "valley woods orchard harbor museum station city jungle").split(),
}
ARTICLE_SLOTS = {"A_ADJ": "ADJ", "AN_ANIMAL": "ANIMAL"}  # "a red", "an owl", ...


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


ACTIVITIES = [pair.split(":") for pair in (  # base form : past tense
    "play:played run:ran jump:jumped dance:danced sing:sang swim:swam climb:climbed read:read "
    "draw:drew paint:painted skip:skipped hop:hopped laugh:laughed explore:explored rest:rested "
    "nap:napped bake:baked wander:wandered hike:hiked splash:splashed giggle:giggled swing:swung "
    "race:raced hide:hid sleep:slept sketch:sketched cook:cooked whistle:whistled").split()]
HANDLINGS = [pair.split(":") for pair in (
    "hold:held hug:hugged carry:carried clean:cleaned wash:washed fix:fixed polish:polished "
    "keep:kept share:shared borrow:borrowed touch:touched fold:folded").split()]
FOODS = ("apple cookie cake sandwich banana carrot pie muffin biscuit cherry plum pear grape berry "
         "pancake cupcake pizza orange").split()

FREE_SLOTS = {  # drawn afresh at every use
    "TIME": ("One day|One morning|One sunny morning|One rainy afternoon|Once upon a time|Long ago|"
             "Last summer|Early one morning|One cold winter night|On a windy day|After breakfast|"
             "After lunch|Before dinner|At sunset|In the spring|On a snowy evening|Last weekend"
             ).split("|"),
    "A_KID_ADJ": [_with_article(w) for w in ("little kind brave curious clever happy shy young "
                                             "cheerful funny gentle smart quiet playful friendly"
                                             ).split()],
    "FEEL": ("happy sad scared excited tired angry surprised proud sleepy hungry curious lonely "
             "worried glad calm upset cheerful grumpy nervous thankful bored jolly sorry silly "
             "delighted puzzled amazed confused hopeful relieved").split(),
    "SPOT": ("bed table chair sofa tree bush door fence stairs rug bench window shelf log wall "
             "gate bridge porch").split(),
    "PREP": ["under", "behind", "near", "beside", "below", "by", "above", "next to"],
    "ADV": ("quickly slowly happily sadly quietly loudly carefully gently softly bravely proudly "
            "eagerly calmly kindly sleepily cheerfully nervously patiently politely excitedly"
            ).split(),
    "SAY": "said shouted whispered explained cried announced yelled replied".split(),
    "ACT": [base for base, _ in ACTIVITIES],
    "ACT_PAST": [past for _, past in ACTIVITIES],
    "USE": [base for base, _ in HANDLINGS],
    "USED": [past for _, past in HANDLINGS],
    "MOVE": "ran hurried wandered dashed raced crept slipped darted rushed sneaked hopped".split(),
    "FOOD": FOODS,
    "A_FOOD": [_with_article(w) for w in FOODS],
    "WEATHER": "sunny rainy windy snowy cloudy warm cold foggy stormy".split(),
    "FUN": "wonderful lovely great fun perfect beautiful busy strange long magical".split(),
    "RELATIVE": ("mom dad grandma grandpa teacher aunt uncle brother sister neighbor cousin nanny"
                 ).split(),
    "NUMBER": ["three", "five", "seven", "ten", "twenty", "fifty", "one hundred"],
    "A_SOUND": [_with_article(w) for w in ("loud soft strange funny tiny squeaky buzzing ringing "
                                           "rustling splashing tapping odd").split()],
}

# ---- Templates ----------------------------------------------------------------------------------
# {HERO}, {FRIEND}: a name; {SUBJ}: the hero's name or he/she; {KID}, {HE}, {HIM}, {HIS}: the hero's
# girl/boy and pronouns ({FKID}, {FHE}, {FHIS}: the friend's). A template names the hero at most
# once and never uses both a story word and its article slot (the recognizer relies on both).
INTRO = [
    "Once upon a time, there was {A_KID_ADJ} {KID} named {HERO}.",
    "{TIME}, {A_KID_ADJ} {KID} called {HERO} went to the {PLACE}.",
    "{HERO} was {A_KID_ADJ} {KID} who lived near the {PLACE}.",
    "There once was {A_KID_ADJ} {KID}, and {HIS} name was {HERO}.",
    "{TIME}, {HERO} woke up feeling {FEEL}.",
    "{HERO} was {A_KID_ADJ} {KID} who loved to {ACT}.",
]
OBJECT_INTRO = [
    "{SUBJ} had {A_ADJ} {THING}.",
    "{TIME}, {SUBJ} found {A_ADJ} {THING} {PREP} the {SPOT}.",
    "{HIS} {RELATIVE} gave {HIM} {A_ADJ} {THING}.",
    "{SUBJ} loved {HIS} {ADJ} {THING} more than anything.",
    "At the {PLACE}, {SUBJ} saw {A_ADJ} {THING} on the ground.",
]
MIDDLE = {  # keyed by who must already be in the story
    "hero": [
        "{SUBJ} played with the {THING} all day.",
        "{SUBJ} wanted to {USE} the {THING}.",
        "{SUBJ} {USED} the {THING} {ADV}.",
        "Then {HE} took the {ADJ} {THING} to the {PLACE}.",
        "Suddenly, the {THING} was gone!",
        "{SUBJ} looked {PREP} the {SPOT}, but the {THING} was not there.",
        "Where could the {THING} be?",
        "{SUBJ} felt very {FEEL}.",
        "{SUBJ} was so {FEEL}!",
        "The weather was {WEATHER}, so {HE} decided to {ACT}.",
        "{SUBJ} ate {A_FOOD} and {ACT_PAST} for a while.",
        "Suddenly, {HE} heard {A_SOUND} sound {PREP} the {SPOT}.",
        "{SUBJ} {SAY} that the {THING} was {ADJ}.",
        "{SUBJ} counted to {NUMBER} and {ACT_PAST} {ADV}.",
        "{SUBJ} ran to tell {HIS} {RELATIVE} about the {THING}.",
        "Did {HE} remember where the {THING} was?",
        "What a {FUN} day it was!",
        "{SUBJ} put the {THING} {PREP} the {SPOT} to keep it safe.",
        "Later, {HE} walked {ADV} to the {PLACE}.",
    ],
    "friend": [
        "{FRIEND} asked if {FHE} could {USE} the {THING}.",
        "{SUBJ} and {FRIEND} {ACT_PAST} together.",
        "{SUBJ} {SAY} to {FRIEND} that {HE} was {FEEL}.",
        "{FRIEND} helped {HIM} look for the {THING}.",
        "{FRIEND} smiled and gave {HIM} a big hug.",
        "Would {FRIEND} share {FHIS} {FOOD} with {HIM}?",
        "{FRIEND} {SAY} that {FHE} wanted to {ACT}.",
    ],
    "animal": [
        "The {ANIMAL} {MOVE} away with the {THING}!",
        "{SUBJ} shared {HIS} {FOOD} with the {ANIMAL}.",
        "The {ANIMAL} looked {FEEL} and {MOVE} {PREP} the {SPOT}.",
        "Was the {ANIMAL} {FEEL}?",
        "{SUBJ} gave the {ANIMAL} a gentle pat.",
    ],
}
INTRODUCE = {  # middle sentences that bring the friend or the animal in (at most once each)
    "friend": ["At the {PLACE}, {SUBJ} met {A_KID_ADJ} {FKID} named {FRIEND}.",
               "{HIS} best friend {FRIEND} came over to play."],
    "animal": ["Then {SUBJ} saw {AN_ANIMAL} {PREP} the {SPOT}.",
               "{AN_ANIMAL} came to the {PLACE} looking for food."],
}
ENDING = [
    "In the end, {SUBJ} was very {FEEL}.",
    "From that day on, {SUBJ} always kept the {THING} close.",
    "That night, {SUBJ} dreamed about the {ADJ} {THING}.",
    "{SUBJ} hugged the {THING} and smiled.",
    "It was the best day ever!",
    "{SUBJ} went home {ADV}.",
    "{SUBJ} would never forget that {FUN} day.",
]
TEMPLATES = (INTRO + OBJECT_INTRO + [t for ts in MIDDLE.values() for t in ts]
             + [t for ts in INTRODUCE.values() for t in ts] + ENDING)


def _has_adjacent_repeat(text: str) -> bool:
    """Does a word directly follow itself, ignoring case and punctuation?"""
    for mark in ".,!?":
        text = text.replace(mark, " ")
    words = text.lower().split()
    return any(a == b for a, b in zip(words, words[1:]))


@functools.cache
def _character(gender: str, prefix: str) -> dict[str, str]:
    """The gendered slots of one character: KID, HE, HIM, HIS (prefixed "F" for the friend)."""
    return {prefix + "KID": gender, **{prefix + k: v for k, v in PRONOUNS[gender].items()}}


# ---- Generator ----------------------------------------------------------------------------------
# How often a {SUBJ} slot names the hero rather than saying he/she. 0.5 is the shipped corpus;
# more makes the name come back more often, so copying it pays more (docs/copying.md). Any share
# draws the same random numbers, so 0.5 gives the shipped stories exactly, and every sentence of
# any share is one the 0.5 grammar can produce: the recognizer stays exact.
NAME_SHARE = 0.5

def _pick(rng: random.Random, seq):
    """rng.choice(seq), three times faster: the default corpus makes about a million picks."""
    return seq[int(rng.random() * len(seq))]


_GENDER = {name: gender for gender, names in NAMES.items() for name in names}
_ALL_NAMES = list(_GENDER)


class _Story(dict):
    """One story's slot values; str.format_map asks __missing__ for any slot not stored yet."""

    def __init__(self, rng: random.Random, name_share: float = NAME_SHARE):
        hero = friend = _pick(rng, _ALL_NAMES)
        while friend == hero:
            friend = _pick(rng, _ALL_NAMES)
        super().__init__(_character(_GENDER[hero], ""), HERO=hero, FRIEND=friend)
        self.update(_character(_GENDER[friend], "F"))
        self.rng, self.name_share = rng, name_share

    def __missing__(self, slot: str) -> str:
        if slot == "SUBJ":  # the hero by name or by pronoun, decided at each mention
            return self["HERO"] if self.rng.random() < self.name_share else self["HE"]
        if slot in FREE_SLOTS:
            return _pick(self.rng, FREE_SLOTS[slot])
        if slot in ARTICLE_SLOTS:  # a story slot: drawn at its first use, then kept
            self[slot] = _with_article(self[ARTICLE_SLOTS[slot]])
        else:
            self[slot] = _pick(self.rng, STORY_WORDS[slot])
        return self[slot]

    def sentence(self, template: str) -> str:
        text = template.format_map(self)
        return text[0].upper() + text[1:]


@functools.cache
def _middle_pool(present: tuple[str, ...]) -> list[str]:
    """Middle templates about someone already present, or introducing someone new."""
    return ([t for who in present for t in MIDDLE[who]]
            + [t for who, ts in INTRODUCE.items() if who not in present for t in ts])


def _draw_story(rng: random.Random, name_share: float) -> str:
    story = _Story(rng, name_share)
    sentences = [story.sentence(_pick(rng, INTRO)), story.sentence(_pick(rng, OBJECT_INTRO))]
    present, used = ("hero",), set()
    for _ in range(rng.randint(0, 5)):
        template = _pick(rng, _middle_pool(present))
        while template in used:  # no middle sentence shape twice in one story
            template = _pick(rng, _middle_pool(present))
        used.add(template)
        present += tuple(who for who, ts in INTRODUCE.items() if template in ts)
        sentences.append(story.sentence(template))
    sentences.append(story.sentence(_pick(rng, ENDING)))
    return " ".join(sentences)


def generate_story(rng: random.Random, name_share: float = NAME_SHARE) -> str:
    """One story of 3-8 sentences on a single line, redrawn until no word follows itself."""
    while True:
        story = _draw_story(rng, name_share)
        if not _has_adjacent_repeat(story):
            return story


def generate_stories(n: int, seed: int = 0, name_share: float = NAME_SHARE) -> list[str]:
    rng = random.Random(seed)
    return [generate_story(rng, name_share) for _ in range(n)]


def default_corpus(seed: int = 0, n_train: int = 40000, n_val: int = 1000, name_share: float = NAME_SHARE):
    """(train, val): val comes from its own derived seed and shares no story with train."""
    train = generate_stories(n_train, seed, name_share)
    seen, val = set(train), []
    rng = random.Random(f"minidlm-validation-{seed}")
    while len(val) < n_val:
        story = generate_story(rng, name_share)
        if story not in seen:
            seen.add(story)
            val.append(story)
    return train, val


# ---- Recognizer ---------------------------------------------------------------------------------
_SLOT = re.compile(r"\{([A-Z_]+)\}")
_NAME_SLOTS = ("HERO", "FRIEND")
_STORY_SLOTS = {*_NAME_SLOTS, *STORY_WORDS, *ARTICLE_SLOTS}


def _slot_values(hero_gender: str, friend_gender: str) -> dict[str, list[str]]:
    """Every value each slot can take, once the two characters' genders are fixed."""
    gendered = {**_character(hero_gender, ""), **_character(friend_gender, "F")}
    return {**FREE_SLOTS, **STORY_WORDS, **{slot: [v] for slot, v in gendered.items()},
            "HERO": NAMES[hero_gender], "FRIEND": NAMES[friend_gender],
            **{slot: [_with_article(w) for w in STORY_WORDS[word]]
               for slot, word in ARTICLE_SLOTS.items()}}


def _template_regex(template: str, values: dict[str, list[str]]) -> str:
    """A story slot used twice must repeat its value (a backreference); hero and friend differ."""
    captured = []

    def slot_regex(slot: str) -> str:
        if slot == "SUBJ":
            return f"(?:{slot_regex('HERO')}|{values['HE'][0]})"
        if slot in captured:
            return f"(?P={slot})"
        alternatives = "|".join(map(re.escape, values[slot]))
        if slot not in _STORY_SLOTS:
            return f"(?:{alternatives})"
        others = [o for o in _NAME_SLOTS if slot in _NAME_SLOTS and o in captured]
        captured.append(slot)
        return "".join(rf"(?!(?P={o})\b)" for o in others) + f"(?P<{slot}>{alternatives})"

    parts = _SLOT.split(template)  # literal text at even positions, slot names at odd ones
    return "".join(re.escape(p) if i % 2 == 0 else slot_regex(p) for i, p in enumerate(parts))


@functools.cache
def _recognizers() -> list[re.Pattern]:
    """One regex per template and pair of genders (so he/his/girl agree with the names)."""
    patterns = {_template_regex(t, _slot_values(hero, friend))
                for hero, friend in itertools.product(NAMES, repeat=2) for t in TEMPLATES}
    return [re.compile(p) for p in sorted(patterns)]


def is_grammatical(sentence: str) -> bool:
    """True iff the grammar can produce this sentence, final punctuation included.

    Per sentence only: whether the name or the object was introduced earlier is not checked.
    """
    sentence = sentence.strip()
    if not sentence[:1].isupper() or _has_adjacent_repeat(sentence):
        return False
    uncapitalised = sentence[0].lower() + sentence[1:]  # "She ..." was rendered from "{HE} ..."
    return any(r.fullmatch(sentence) or r.fullmatch(uncapitalised) for r in _recognizers())


def split_sentences(text: str) -> list[str]:
    """Pieces of text ending at . ! or ? followed by whitespace or the end; stripped, none empty."""
    return [s.strip() for s in re.split(r"(?<=[.!?])(?:\s+|$)", text) if s.strip()]


def complete_sentences(text: str) -> list[str]:
    """The sentences of `text` that end in . ! or ?; a trailing fragment without final punctuation
    (a sample cut off mid-sentence) is not one."""
    return [s for s in split_sentences(text) if s[-1] in ".!?"]


def grammatical_rate(texts: str | Iterable[str]) -> float:
    """The fraction of complete sentences that the grammar can produce, in one text or pooled over
    several (a text with more sentences weighs more). 0.0 when no sentence is complete."""
    complete = [s for text in ([texts] if isinstance(texts, str) else texts) for s in complete_sentences(text)]
    if not complete:
        return 0.0
    return sum(map(is_grammatical, complete)) / len(complete)


# ---- A user's own text --------------------------------------------------------------------------
# byte-order marks, longest first (UTF-32-LE's begins with UTF-16-LE's): Windows PowerShell writes
# UTF-16-LE with a BOM by default (`>` and Out-File), Notepad once wrote UTF-8 with one
BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def decode_text(raw: bytes, path: str) -> str:
    """The text of a file's bytes: decoded by its byte-order mark (UTF-8, UTF-16 or UTF-32) if it
    has one, else as UTF-8; line ends made \\n. A CorpusError if it is binary or not that encoding."""
    encoding = next((name for bom, name in BOMS if raw.startswith(bom)), None)
    if encoding is None and b"\0" in raw:
        raise CorpusError(f"corpus file looks binary (it contains NUL bytes): {path}")
    try:
        text = raw.decode(encoding or "utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus file is not valid {(encoding or 'utf-8').upper().replace('-SIG', '')} "
                          f"(byte {e.start}): {path}") from None
    if "\0" in text:
        raise CorpusError(f"corpus file looks binary (it contains NUL characters): {path}")
    return text.replace("\r\n", "\n")


def load_text_file(path: str, min_chars: int = 2000) -> list[str]:
    """A text file (UTF-8; or UTF-16/32 or UTF-8 with a byte-order mark) as documents: one per block
    of lines between blank lines."""
    if not os.path.isfile(path):
        raise CorpusError(f"corpus file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    text = decode_text(raw, path).strip()
    if not text:
        raise CorpusError(f"corpus file is empty: {path}")
    if len(text) < min_chars:
        raise CorpusError(f"corpus file has {len(text)} characters, needs {min_chars}: {path}")
    return [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]


def split_train_val(docs: list[str], val_fraction: float = 0.05, seed: int = 0):
    """(train, val): a seeded split of whole documents, with at least one in val.

    A single document is cut by characters instead: the last `val_fraction` of its text is val.
    """
    if not docs:
        raise CorpusError("no documents to split")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(docs) == 1:
        cut = len(docs[0]) - max(1, round(len(docs[0]) * val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))])
    return ([d for i, d in enumerate(docs) if i not in val_ids],
            [d for i, d in enumerate(docs) if i in val_ids])
