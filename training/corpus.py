"""Training text from Debian packages and templates, normalised to DeepSpeech's alphabet (a-z, space, ').

Sources, all deterministic given the installed packages and a seed:
- `fortunes` / `fortunes-min` (/usr/share/games/fortunes): quotes split into sentences;
- `wamerican` (/usr/share/dict/american-english): sequences of random lowercase words, to teach spelling;
- numbers, times and dates written out in words (`number_words`, `year_words`, ...);
- command-like sentences ("turn on the kitchen lights", "set a timer for ten minutes", ...).

Held-out and dev sentences (training/heldout_sentences.txt, training/dev_sentences.txt) are drawn from the
same pools by a hash bucket and removed from everything the model or the scorer is trained on.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDLIST = Path("/usr/share/dict/american-english")
HERE = Path(__file__).resolve().parent
HELDOUT_FILE = HERE / "heldout_sentences.txt"
DEV_FILE = HERE / "dev_sentences.txt"
# Debian package versions the shipped model was built from (bookworm); other versions give other text.
PINNED_PACKAGES = {"fortunes": "1:1.99.1-7.3", "fortunes-min": "1:1.99.1-7.3", "wamerican": "2020.12.07-2"}
# Fortune files that are pictures or lists rather than sentences.
_SKIP_FORTUNE_FILES = {"ascii-art", "art"}

ALPHABET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz' ")
MIN_WORDS, MAX_WORDS = 3, 18

# ---------------------------------------------------------------------------------------------------------
# numbers in words

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_ONES = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()
_ORDINAL_TENS = "_ _ twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split()
MONTHS = "january february march april may june july august september october november december".split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()


def number_words(n: int) -> str:
    """Cardinal in words, 0 <= n < 10**9: 1234 -> 'one thousand two hundred thirty four'."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    for size, name in ((10**6, "million"), (1000, "thousand")):
        if n >= size:
            high, rest = divmod(n, size)
            return number_words(high) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """Ordinal in words for 1..99: 21 -> 'twenty first'."""
    if n < 20:
        return _ORDINAL_ONES[n]
    tens, ones = divmod(n, 10)
    return _ORDINAL_TENS[tens] if ones == 0 else _TENS[tens] + " " + _ORDINAL_ONES[ones]


def year_words(year: int) -> str:
    """A year as spoken: 1984 -> 'nineteen eighty four', 2005 -> 'two thousand five', 1900 -> 'nineteen hundred'."""
    if 2000 <= year < 2010:
        return number_words(year)
    high, low = divmod(year, 100)
    if low == 0:
        return number_words(high) + " hundred"
    if low < 10:
        return number_words(high) + " oh " + number_words(low)
    return number_words(high) + " " + number_words(low)


def digits_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


# ---------------------------------------------------------------------------------------------------------
# normalisation

_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_ABBREVIATION = re.compile(
    r"\b(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|eg|ie|no|vol|ch|pp|inc|ltd|co|ft|lb|oz)\.", re.I
)
_INTEGER = re.compile(r"(?<![\d.,/:$])\d{1,6}(?![\d.,/:%A-Za-z])")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def normalize(text: str) -> str | None:
    """Text -> DeepSpeech transcript (lowercase a-z, apostrophe, single spaces), or None when it cannot be
    spoken unambiguously by espeak-ng as written (acronyms, abbreviations, symbols, decimals...)."""
    if _ACRONYM.search(text) or _ABBREVIATION.search(text):
        return None
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = _INTEGER.sub(lambda m: " " + number_words(int(m.group())) + " ", text)
    if re.search(r"[\d@#$%&*+=/\\<>|_~^{}\[\]]", text):
        return None
    text = text.lower()
    text = re.sub(r"[-\u2013\u2014]+", " ", text)
    text = re.sub(r"[^a-z' ]", " ", text)
    words = []
    for word in text.split():
        word = word.strip("'")
        if not word:
            continue
        if word.count("'") > 1:
            return None
        words.append(word)
    out = " ".join(words)
    return out or None


def word_count_ok(sentence: str, low: int = MIN_WORDS, high: int = MAX_WORDS) -> bool:
    n = sentence.count(" ") + 1
    return low <= n <= high


def bucket(sentence: str, modulo: int) -> int:
    """Stable hash bucket of a sentence (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha1(sentence.encode()).digest()[:8], "big") % modulo


# ---------------------------------------------------------------------------------------------------------
# sources


def fortune_sentences(directory: Path = FORTUNES_DIR) -> list[str]:
    """Distinct normalised sentences of the installed fortune files (UTF-8 `.u8` versions), in file order."""
    seen: dict[str, None] = {}
    if not directory.is_dir():
        return []
    names = sorted(p.name for p in directory.iterdir() if p.suffix == ".dat")
    for dat in names:
        stem = dat[: -len(".dat")]
        if stem in _SKIP_FORTUNE_FILES:
            continue
        path = directory / f"{stem}.u8"
        if not path.exists():
            path = directory / stem
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in re.split(r"^%\s*$", text, flags=re.M):
            lines = []
            for line in fortune.splitlines():
                if re.match(r"^\s*(--|\u2014)", line):  # attribution: "-- Mark Twain"
                    break
                lines.append(line.strip())
            body = " ".join(lines)
            if re.search(r"[A-Za-z]:\s*$|^\s*[A-Z][a-z]+:", body) and body.count(":") > 1:
                continue  # dialogue transcripts ("Q: ... A: ...")
            for part in _SENTENCE_END.split(body):
                sentence = normalize(part)
                if sentence and word_count_ok(sentence) and sentence not in seen:
                    seen[sentence] = None
    return list(seen)


def dictionary_words(path: Path = WORDLIST) -> list[str]:
    """Lowercase words of the wamerican list (no proper nouns, no possessives), 2-12 letters."""
    if not path.exists():
        return []
    words = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        w = line.strip()
        if re.fullmatch(r"[a-z]{2,12}", w):
            words.append(w)
    return words


def word_sequences(words: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` sequences of 3-7 random dictionary words (spelling practice, not language)."""
    if not words:
        return []
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 7))) for _ in range(count)]


_ROOMS = [
    "kitchen",
    "living room",
    "bedroom",
    "bathroom",
    "hallway",
    "garage",
    "office",
    "dining room",
    "basement",
    "attic",
    "garden",
    "porch",
    "nursery",
    "study",
    "laundry room",
    "guest room",
    "patio",
    "front",
    "back",
    "upstairs",
    "downstairs",
]
_DEVICES = [
    "lights",
    "light",
    "lamp",
    "fan",
    "heater",
    "radio",
    "television",
    "tv",
    "speaker",
    "air conditioner",
    "coffee machine",
    "dishwasher",
    "oven",
    "kettle",
    "music",
    "ceiling fan",
    "lamps",
    "heating",
]
_PLACES = (
    "the kitchen,the office,the bedroom,the living room,the garage,upstairs,downstairs,the garden".split(",")
)
_NAMES = (
    "mom dad anna john sarah michael emma david lisa peter maria james linda robert susan thomas alice "
    "george helen paul laura mark kate daniel grandma grandpa"
).split()
_GENRES = "jazz,rock,classical music,the news,some music,the radio,my playlist,pop music,country music".split(
    ","
)
_TASKS = (
    "buy milk,call the doctor,water the plants,take out the trash,pick up the kids,pay the bills,"
    "feed the cat,walk the dog,book a table,check the mail,send the report,charge my phone"
).split(",")
_CITIES = (
    "london paris berlin madrid rome boston chicago seattle denver dallas toronto sydney tokyo dublin "
    "vienna prague"
).split()
_UNITS = ("minutes", "seconds", "hours")


def command_sentences() -> list[str]:
    """All command-like sentences the templates make (deterministic order, a few thousand)."""
    out: list[str] = []
    for room, device in itertools.product(_ROOMS, _DEVICES):
        for verb in ("turn on the", "turn off the", "switch on the", "switch off the"):
            out.append(f"{verb} {room} {device}")
        out.append(f"is the {room} {device} on")
    for room in _ROOMS:
        for n in range(10, 101, 10):
            out.append(f"dim the {room} lights to {number_words(n)} percent")
        for n in range(15, 31):
            out.append(f"set the {room} temperature to {number_words(n)} degrees")
        out.append(f"what is the temperature in the {room}")
        out.append(f"close the {room} blinds")
        out.append(f"open the {room} window")
        out.append(f"close the {room} window")
        out.append(f"lock the {room} door")
        out.append(f"unlock the {room} door")
    for n, unit in itertools.product(range(1, 61), _UNITS):
        out.append(f"set a timer for {number_words(n)} {unit}")
    for hour, minute in itertools.product(range(1, 13), (0, 15, 30, 45, 5, 10, 20, 40, 50)):
        time = number_words(hour) + (" o'clock" if minute == 0 else " " + number_words(minute))
        if 0 < minute < 10:
            time = number_words(hour) + " oh " + number_words(minute)
        out.append(f"wake me up at {time}")
        out.append(f"set an alarm for {time}")
    for name in _NAMES:
        out.append(f"call {name}")
        out.append(f"send a message to {name}")
        out.append(f"remind me to call {name} tomorrow")
    for genre, place in itertools.product(_GENRES, _PLACES):
        out.append(f"play {genre} in {place}")
    for task in _TASKS:
        out.append(f"remind me to {task}")
        out.append(f"add {task} to my list")
    for city in _CITIES:
        out.append(f"what is the weather in {city}")
        out.append(f"what time is it in {city}")
        out.append(f"how far is {city}")
    for day in WEEKDAYS:
        out.append(f"what is on my calendar on {day}")
        out.append(f"will it rain on {day}")
    out += [
        "what time is it",
        "what is the weather like today",
        "stop the music",
        "pause the music",
        "next song",
        "turn up the volume",
        "turn down the volume",
        "good morning",
        "good night",
        "cancel the timer",
        "lock the front door",
        "open the garage door",
        "close the garage door",
        "start the vacuum cleaner",
        "stop the vacuum cleaner",
        "turn off all the lights",
        "turn on all the lights",
        "read me the news",
        "how long is my commute",
        "where is my phone",
    ]
    return list(dict.fromkeys(out))


def number_sentences(count: int, rng: random.Random) -> list[str]:
    """Numbers, money, phone numbers, times and dates written out in words."""
    templates = [
        lambda: number_words(rng.randint(0, 100)),
        lambda: number_words(rng.randint(100, 999_999)),
        lambda: (
            f"the total is {number_words(rng.randint(1, 999))} dollars and {number_words(rng.randint(1, 99))} cents"
        ),
        lambda: f"call me at {digits_words(''.join(rng.choice('0123456789') for _ in range(7)))}",
        lambda: (
            f"my number is {digits_words(''.join(rng.choice('0123456789') for _ in range(rng.randint(4, 10))))}"
        ),
        lambda: f"the meeting is on {rng.choice(MONTHS)} {ordinal_words(rng.randint(1, 31))}",
        lambda: (
            f"{rng.choice(MONTHS)} {ordinal_words(rng.randint(1, 31))} {year_words(rng.randint(1900, 2030))}"
        ),
        lambda: f"she was born in {year_words(rng.randint(1900, 2024))}",
        lambda: f"on {rng.choice(WEEKDAYS)} the {ordinal_words(rng.randint(1, 31))} of {rng.choice(MONTHS)}",
        lambda: f"it is {number_words(rng.randint(1, 12))} {number_words(rng.randint(10, 59))}",
        lambda: (
            f"there are {number_words(rng.randint(2, 999))} {rng.choice(['people', 'apples', 'cars', 'books', 'days', 'miles', 'steps'])}"
        ),
        lambda: f"room {number_words(rng.randint(1, 999))} on the {ordinal_words(rng.randint(1, 20))} floor",
        lambda: f"the year {year_words(rng.randint(1500, 2099))}",
        lambda: f"{number_words(rng.randint(2, 99))} percent of {number_words(rng.randint(100, 9999))}",
        lambda: f"page {number_words(rng.randint(1, 500))} chapter {number_words(rng.randint(1, 40))}",
    ]
    return [rng.choice(templates)() for _ in range(count)]


def demo_sentences() -> list[str]:
    """Sentences the README and tests speak: always in training, never in the held-out set."""
    return ["turn on the kitchen lights", "turn off the kitchen lights", "hello world", "what time is it"]


# ---------------------------------------------------------------------------------------------------------
# splits


def read_sentences(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Corpus:
    """Training text by source, with the held-out and dev sentences already removed."""

    fortunes: list[str]
    commands: list[str]
    numbers: list[str]
    word_sequences: list[str]

    def lm_sentences(self) -> list[str]:
        """The scorer's text: real language (not the random word sequences)."""
        return self.fortunes + self.commands + self.numbers + demo_sentences()

    def describe(self) -> dict[str, int]:
        return {
            "fortunes": len(self.fortunes),
            "commands": len(self.commands),
            "numbers": len(self.numbers),
            "word_sequences": len(self.word_sequences),
        }


def excluded_sentences() -> set[str]:
    return set(read_sentences(HELDOUT_FILE)) | set(read_sentences(DEV_FILE))


# Buckets of 100 reserved for evaluation pools: held-out draws from bucket 0, dev from bucket 1.
HELDOUT_BUCKET, DEV_BUCKET, N_BUCKETS = 0, 1, 100


def build_corpus(seed: int = 1234, n_numbers: int = 20000, n_word_sequences: int = 20000) -> Corpus:
    """Everything the model and the scorer may see; sentences in the eval buckets or files are excluded."""
    rng = random.Random(seed)
    excluded = excluded_sentences()

    def keep(sentences: Iterable[str]) -> list[str]:
        return [
            s
            for s in sentences
            if s not in excluded and bucket(s, N_BUCKETS) not in (HELDOUT_BUCKET, DEV_BUCKET)
        ]

    return Corpus(
        fortunes=keep(fortune_sentences()),
        commands=keep(command_sentences()),
        numbers=keep(dict.fromkeys(number_sentences(n_numbers, rng))),
        word_sequences=keep(word_sequences(dictionary_words(), n_word_sequences, rng)),
    )


def evaluation_pool(which: int, seed: int) -> dict[str, list[str]]:
    """Candidate evaluation sentences of one reserved bucket (used once to write the committed files)."""
    rng = random.Random(seed)
    return {
        "fortunes": [
            s for s in fortune_sentences() if bucket(s, N_BUCKETS) == which and word_count_ok(s, 4, 16)
        ],
        "commands": [s for s in command_sentences() if bucket(s, N_BUCKETS) == which],
        "numbers": list(
            dict.fromkeys(s for s in number_sentences(20000, rng) if bucket(s, N_BUCKETS) == which)
        ),
    }


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path
