"""A small generative grammar and the smart-home voice-assistant domain built with it.

Templates are words with three kinds of markup::

    <room>          a reference to the rule "room" (a slot if "room" is a slot rule)
    (on | off)      one of several alternatives
    [please]        optional words

Sentences are in spoken form: lowercase words and apostrophes only ("set a timer for twenty
five minutes"), so the transcript is exactly what eSpeak says. Sampling picks an alternative with
probability proportional to ``derivations ** sampling_exponent``: large alternatives (every clock
time) are picked more often than tiny ones ("noon") without drowning them. Optional words are
said with a fixed ``optional_probability``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Union

import numpy as np

_TOKEN = re.compile(r"<[a-z0-9_]+>|[()\[\]|]|[a-z']+|\S")
_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class Utterance:
    """One sampled sentence: spoken-form ``text``, its ``intent`` and slot name -> slot text."""

    text: str
    intent: str
    slots: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Intent:
    """What a user wants (``name``), its ``domain`` ("lights", "timers", ...) and its phrasings."""

    name: str
    domain: str
    templates: tuple[str, ...]


# Parse tree: a word (str), a rule reference, a sequence, or a choice among alternatives.
@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Seq:
    items: tuple["_Node", ...]


@dataclass(frozen=True, eq=False)  # compared by identity: each choice keeps its own weights
class _Alt:
    options: tuple["_Node", ...]
    optional: bool = False  # "[x]": options are (x, nothing), x taken with optional_probability


_Node = Union[str, _Ref, _Seq, _Alt]


class Grammar:
    """Intents with templates over shared rules; sample, count and list the vocabulary.

    rules: rule name -> alternatives (templates); slots: the rule names whose text is reported
    as a slot; sampling_exponent: 0 = alternatives equally likely, 1 = every sentence equally
    likely; optional_probability: how often optional "[...]" words are said. Raises ValueError
    for a syntax error, an unknown rule or a recursive rule.
    """

    def __init__(
        self,
        intents: list[Intent],
        rules: dict[str, list[str]],
        slots: set[str],
        sampling_exponent: float = 0.5,
        optional_probability: float = 0.4,
    ) -> None:
        self.intents = {intent.name: intent for intent in intents}
        self.slots = frozenset(slots)
        self._rules = {name: _Alt(tuple(_parse(t) for t in alts)) for name, alts in rules.items()}
        self._intent_nodes = {i.name: _Alt(tuple(_parse(t) for t in i.templates)) for i in intents}
        unknown = self.slots - set(self._rules)
        if unknown:
            raise ValueError(f"slots without a rule: {sorted(unknown)}")
        self._counts: dict[str, int] = {}
        for name in self._rules:
            self._rule_count(name, ())
        self._cumulative: dict[int, np.ndarray] = {}
        for node in [*self._rules.values(), *self._intent_nodes.values()]:
            self._prepare(node, sampling_exponent, optional_probability)
        self._intent_names = sorted(self.intents)

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, intent: str | None = None) -> Utterance:
        """Draw one utterance: a uniformly chosen intent (or the given one), then its words."""
        if intent is None:
            intent = self._intent_names[int(rng.integers(len(self._intent_names)))]
        words: list[str] = []
        slots: dict[str, str] = {}
        self._sample(self._intent_nodes[intent], rng, words, slots)
        return Utterance(" ".join(words), intent, slots)

    def _sample(self, node: _Node, rng: np.random.Generator, words: list[str], slots: dict) -> None:
        if isinstance(node, str):
            words.append(node)
        elif isinstance(node, _Seq):
            for item in node.items:
                self._sample(item, rng, words, slots)
        elif isinstance(node, _Alt):
            k = int(np.searchsorted(self._cumulative[id(node)], rng.random(), side="right"))
            self._sample(node.options[min(k, len(node.options) - 1)], rng, words, slots)
        else:
            start = len(words)
            self._sample(self._rules[node.name], rng, words, slots)
            if node.name in self.slots:
                name, n = node.name, 2
                while name in slots:  # a template with the same slot twice: item, item_2
                    name, n = f"{node.name}_{n}", n + 1
                slots[name] = " ".join(words[start:])

    # ---- counting -------------------------------------------------------------------------
    def count_derivations(self) -> int:
        """Number of ways to expand all intents: an upper bound on the distinct sentences."""
        return sum(self._count(node) for node in self._intent_nodes.values())

    def count_sentences(self, limit: int | None = 100_000, intent: str | None = None) -> int:
        """Distinct sentences (of one intent, or all), counted by enumerating them.

        Enumeration stops once ``limit`` distinct sentences are found, so the result is
        ``min(exact count, limit)``: exact below the limit, a sound lower bound at it. The
        smart-home grammar has ~1e11 derivations, so ``limit=None`` (no limit) would not end;
        100,000 takes about a second.
        """
        names = [intent] if intent is not None else self._intent_names
        seen: set[str] = set()
        for name in names:
            for words in self._expand(self._intent_nodes[name]):
                seen.add(" ".join(words))
                if limit is not None and len(seen) >= limit:
                    return limit
        return len(seen)

    def vocabulary(self) -> set[str]:
        """Every word any sentence of the grammar can contain."""
        words: set[str] = set()
        stack: list[_Node] = list(self._intent_nodes.values())
        visited: set[str] = set()
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                words.add(node)
            elif isinstance(node, (_Seq, _Alt)):
                stack.extend(node.items if isinstance(node, _Seq) else node.options)
            elif node.name not in visited:
                visited.add(node.name)
                stack.append(self._rules[node.name])
        return words

    def domains(self) -> dict[str, list[str]]:
        """Domain -> names of its intents."""
        out: dict[str, list[str]] = {}
        for intent in self.intents.values():
            out.setdefault(intent.domain, []).append(intent.name)
        return out

    def _expand(self, node: _Node) -> Iterator[tuple[str, ...]]:
        if isinstance(node, str):
            yield (node,)
        elif isinstance(node, _Ref):
            yield from self._expand(self._rules[node.name])
        elif isinstance(node, _Alt):
            for option in node.options:
                yield from self._expand(option)
        elif not node.items:
            yield ()
        else:
            for head in self._expand(node.items[0]):
                for tail in self._expand(_Seq(node.items[1:])):
                    yield head + tail

    def _count(self, node: _Node) -> int:
        if isinstance(node, str):
            return 1
        if isinstance(node, _Ref):
            return self._counts[node.name]
        if isinstance(node, _Seq):
            return math.prod(self._count(item) for item in node.items)
        return sum(self._count(option) for option in node.options)

    def _rule_count(self, name: str, path: tuple[str, ...]) -> int:
        """Derivations of rule ``name``, checking every reference exists and nothing recurses."""
        if name in path:
            raise ValueError(f"recursive rule: {' -> '.join(path + (name,))}")
        if name not in self._rules:
            raise ValueError(f"unknown rule <{name}>" + (f" in <{path[-1]}>" if path else ""))
        if name not in self._counts:
            for ref in _refs(self._rules[name]):
                self._rule_count(ref, path + (name,))
            self._counts[name] = self._count(self._rules[name])
        return self._counts[name]

    def _prepare(self, node: _Node, exponent: float, optional_probability: float) -> None:
        """Store each choice's cumulative probabilities: weight = derivations ** exponent."""
        for ref in _refs(node):
            self._rule_count(ref, ())
        if isinstance(node, _Seq):
            for item in node.items:
                self._prepare(item, exponent, optional_probability)
        elif isinstance(node, _Alt):
            if node.optional:
                weights = np.array([optional_probability, 1.0 - optional_probability])
            else:
                weights = np.array([float(self._count(o)) ** exponent for o in node.options])
            self._cumulative[id(node)] = np.cumsum(weights / weights.sum())
            for option in node.options:
                self._prepare(option, exponent, optional_probability)


def _refs(node: _Node) -> Iterator[str]:
    """Names of the rules ``node`` refers to directly (not through other rules)."""
    if isinstance(node, _Ref):
        yield node.name
    elif isinstance(node, (_Seq, _Alt)):
        for child in node.items if isinstance(node, _Seq) else node.options:
            yield from _refs(child)


def _parse(template: str) -> _Node:
    """Parse one template into a tree; raises ValueError naming the template on bad syntax."""
    tokens = _TOKEN.findall(template)
    pos = 0

    def alternatives() -> _Node:
        nonlocal pos
        options = [sequence()]
        while pos < len(tokens) and tokens[pos] == "|":
            pos += 1
            options.append(sequence())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence() -> _Seq:
        nonlocal pos
        items: list[_Node] = []
        while pos < len(tokens) and tokens[pos] not in ")]|":
            tok = tokens[pos]
            pos += 1
            if tok in "([":
                inner = alternatives()
                closing = ")" if tok == "(" else "]"
                if pos >= len(tokens) or tokens[pos] != closing:
                    raise ValueError(f"missing {closing!r} in template {template!r}")
                pos += 1
                items.append(inner if tok == "(" else _Alt((inner, _Seq(())), optional=True))
            elif tok.startswith("<"):
                items.append(_Ref(tok[1:-1]))
            elif _WORD.fullmatch(tok):
                items.append(tok)
            else:
                raise ValueError(f"unexpected {tok!r} in template {template!r}")
        return _Seq(tuple(items))

    tree = alternatives()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in template {template!r}")
    return tree


# ------------------------------------------------------------------------------------------
# The smart-home domain
# ------------------------------------------------------------------------------------------

_ONES = "one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()

_RULES: dict[str, list[str]] = {
    # numbers
    "one_nine": _ONES,
    "two_nine": _ONES[1:],
    "teen": _TEENS,
    "tens": _TENS,
    "number": ["<one_nine>", "<teen>", "<tens> [<one_nine>]"],  # 1-99
    "number_2_99": ["<two_nine>", "<teen>", "<tens> [<one_nine>]"],
    "number_2_59": ["<two_nine>", "<teen>", "(twenty | thirty | forty | fifty) [<one_nine>]"],
    "number_1_10": [*_ONES, "ten"],
    "percent": ["(<number> | one hundred | a hundred) percent"],
    "volume": ["<number_1_10>", "<percent>"],
    "channel": ["<number>", "(one | two) hundred [[and] <number>]"],
    # temperatures
    "temperature": [
        "(sixteen | seventeen | eighteen | nineteen | twenty [<one_nine>] | thirty) [degrees]",
        "(sixty | seventy) [<one_nine>] [degrees]",
        "eighty [degrees]",
    ],
    "degrees_change": ["(one | two | three | four | five) degrees", "a (degree | few degrees)"],
    "oven_temperature": [
        "(one | two | three | four | five) hundred [[and] (twenty | twenty five | fifty | seventy"
        " five)] degrees",
        "(one hundred | two hundred) [and] (sixty | eighty) degrees",
    ],
    # times, dates, durations
    "hour": [*_ONES, "ten", "eleven", "twelve"],
    "minute": [
        "oh <one_nine>",
        "<teen>",
        "(twenty | thirty | forty | fifty) [<one_nine>]",
    ],
    "daypart": ["in the morning", "in the afternoon", "in the evening", "at night"],
    "time": [
        "<hour> o'clock [<daypart>]",
        "<hour> <minute> [<daypart>]",
        "(half past | quarter past | quarter to) <hour> [<daypart>]",
        "<number_2_59> (minutes past | minutes to) <hour>",
        "noon",
        "midnight",
    ],
    "weekday": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "month": (
        "january february march april may june july august september october november december"
    ).split(),
    "ordinal": [*_ORDINALS, "twentieth", "twenty (<ord_1_9>)", "thirtieth", "thirty first"],
    "ord_1_9": _ORDINALS[:9],
    "calendar_day": ["<month> <ordinal>", "the <ordinal> of <month>"],
    "date": [
        "today",
        "tomorrow",
        "the day after tomorrow",
        "on <weekday>",
        "(next | this) <weekday>",
        "on <calendar_day>",
        "(this | next) week",
        "this weekend",
    ],
    "snooze_time": ["(five | ten | fifteen | twenty | thirty) minutes", "a few minutes"],
    "duration": [
        "one (second | minute | hour)",
        "a minute",
        "<number_2_99> (seconds | minutes)",
        "(two | three | four | five | six | seven | eight | nine | ten | eleven | twelve) hours",
        "an hour [and a half]",
        "half an hour",
        "(one hour | <two_nine> hours) and (fifteen | thirty | forty five) minutes",
        "(one minute | <two_nine> minutes | ten minutes) and (ten | fifteen | twenty | thirty"
        " | forty five) seconds",
    ],
    # the house
    "room": [
        "kitchen",
        "living room",
        "bedroom",
        "master bedroom",
        "bathroom",
        "dining room",
        "hallway",
        "garage",
        "office",
        "basement",
        "attic",
        "nursery",
        "guest room",
        "kids room",
        "laundry room",
        "porch",
        "garden",
        "patio",
        "study",
        "den",
        "playroom",
        "upstairs",
        "downstairs",
        "entrance",
        "balcony",
    ],  # fmt: skip
    "light": [
        "lights",
        "light",
        "lamp",
        "ceiling light",
        "floor lamp",
        "desk lamp",
        "reading lamp",
        "light strip",
        "night light",
        "spotlights",
        "lamps",
    ],  # fmt: skip
    "color": [
        "red",
        "blue",
        "green",
        "yellow",
        "orange",
        "purple",
        "pink",
        "white",
        "warm white",
        "cool white",
        "daylight",
        "turquoise",
        "lavender",
        "amber",
        "soft white",
        "violet",
    ],  # fmt: skip
    "door": [
        "front door",
        "back door",
        "side door",
        "garage door",
        "patio door",
        "basement door",
        "gate",
        "front gate",
        "back gate",
        "balcony door",
        "shed",
    ],  # fmt: skip
    "blind": ["blinds", "shades", "curtains", "shutters", "window blinds", "roller blinds"],
    "appliance": [
        "dishwasher",
        "washing machine",
        "dryer",
        "oven",
        "microwave",
        "coffee maker",
        "kettle",
        "robot vacuum",
        "vacuum cleaner",
        "air purifier",
        "dehumidifier",
        "humidifier",
        "ceiling fan",
        "toaster",
        "rice cooker",
        "slow cooker",
        "water heater",
        "sprinklers",
        "pool pump",
        "hot tub",
        "espresso machine",
        "bread maker",
        "electric blanket",
    ],  # fmt: skip
    "climate_device": [
        "heating",
        "heater",
        "air conditioning",
        "air conditioner",
        "fan",
        "radiator",
        "floor heating",
        "heat pump",
        "furnace",
    ],  # fmt: skip
    "scene": [
        "movie night",
        "good morning",
        "good night",
        "dinner",
        "party",
        "reading",
        "relax",
        "away",
        "vacation",
        "bedtime",
        "cleaning",
        "romantic",
    ],  # fmt: skip
    # media
    "genre": [
        "jazz",
        "rock",
        "classical",
        "pop",
        "country",
        "hip hop",
        "blues",
        "reggae",
        "folk",
        "electronic",
        "soul",
        "metal",
        "ambient",
        "piano",
        "lullaby",
        "disco",
    ],  # fmt: skip
    "artist": [
        "the beatles",
        "queen",
        "abba",
        "adele",
        "madonna",
        "coldplay",
        "taylor swift",
        "miles davis",
        "bob marley",
        "elvis presley",
        "johnny cash",
        "mozart",
        "beethoven",
        "bach",
        "the rolling stones",
        "nina simone",
        "frank sinatra",
        "billie eilish",
    ],  # fmt: skip
    "playlist": [
        "workout",
        "morning",
        "dinner",
        "party",
        "focus",
        "sleep",
        "road trip",
        "favorites",
        "chill",
        "running",
        "cooking",
        "study",
    ],  # fmt: skip
    "media_source": ["the radio", "the news", "a podcast", "an audiobook", "the latest episode"],
    "speaker": ["speaker", "television", "sound bar", "stereo"],
    # weather, calendar, lists, reminders
    "city": [
        "london",
        "paris",
        "berlin",
        "madrid",
        "rome",
        "dublin",
        "tokyo",
        "sydney",
        "toronto",
        "new york",
        "chicago",
        "boston",
        "seattle",
        "denver",
        "miami",
        "san francisco",
        "vienna",
        "amsterdam",
        "oslo",
        "lisbon",
        "cairo",
        "mumbai",
        "mexico city",
        "vancouver",
    ],  # fmt: skip
    "weather_when": [
        "today",
        "tonight",
        "tomorrow",
        "this afternoon",
        "this evening",
        "tomorrow morning",
        "this weekend",
        "next week",
        "on <weekday>",
        "right now",
    ],  # fmt: skip
    "condition": [
        "rain",
        "snow",
        "be sunny",
        "be windy",
        "be cold",
        "be hot",
        "be cloudy",
        "storm",
        "be foggy",
        "freeze",
    ],  # fmt: skip
    "gear": ["an umbrella", "a jacket", "a coat", "sunscreen", "boots", "a scarf", "gloves"],
    "event": [
        "a meeting",
        "a dentist appointment",
        "a doctor's appointment",
        "a haircut",
        "a call",
        "lunch",
        "dinner",
        "a video call",
        "soccer practice",
        "piano lessons",
        "a team meeting",
        "a job interview",
        "a birthday party",
        "yoga class",
        "a parent teacher conference",
        "a date night",
        "a flight",
        "a car service",
    ],  # fmt: skip
    "person": [
        "mom",
        "dad",
        "grandma",
        "grandpa",
        "sarah",
        "john",
        "emma",
        "david",
        "lucy",
        "michael",
        "my boss",
        "the team",
        "anna",
        "peter",
        "my sister",
        "my brother",
        "the neighbors",
        "olivia",
        "james",
        "sophie",
    ],  # fmt: skip
    "item": [
        "milk",
        "eggs",
        "bread",
        "butter",
        "cheese",
        "apples",
        "bananas",
        "oranges",
        "coffee",
        "tea",
        "sugar",
        "flour",
        "rice",
        "pasta",
        "tomatoes",
        "potatoes",
        "onions",
        "garlic",
        "carrots",
        "lettuce",
        "spinach",
        "chicken",
        "beef",
        "salmon",
        "yogurt",
        "cereal",
        "orange juice",
        "peanut butter",
        "olive oil",
        "salt",
        "black pepper",
        "toilet paper",
        "paper towels",
        "dish soap",
        "laundry detergent",
        "shampoo",
        "toothpaste",
        "batteries",
        "light bulbs",
        "trash bags",
        "cat food",
        "dog food",
        "coffee filters",
        "ice cream",
        "chocolate",
        "cookies",
        "crackers",
        "honey",
        "jam",
        "lemons",
        "limes",
        "avocados",
        "cucumbers",
        "broccoli",
        "mushrooms",
        "strawberries",
        "blueberries",
        "grapes",
        "sparkling water",
        "beer",
        "wine",
        "diapers",
        "tissues",
        "sponges",
        "aluminum foil",
        "oat milk",
        "tortillas",
        "frozen peas",
        "baking soda",
        "cinnamon",
    ],  # fmt: skip
    "list_name": ["shopping list", "grocery list", "list"],
    "task": [
        "call mom",
        "call my sister",
        "take out the trash",
        "water the plants",
        "feed the cat",
        "walk the dog",
        "pick up the kids",
        "pay the rent",
        "pay the electricity bill",
        "buy milk",
        "take my medicine",
        "check the mail",
        "book a table",
        "send the report",
        "charge my phone",
        "renew my passport",
        "call the plumber",
        "start the laundry",
        "pick up the dry cleaning",
        "go to the gym",
        "return the library books",
        "lock the back door",
        "turn off the oven",
        "stretch",
        "drink some water",
        "move the car",
        "defrost the chicken",
        "order a birthday present",
        "call the vet",
        "check on the baby",
    ],  # fmt: skip
    "timer_label": [
        "pasta",
        "egg",
        "pizza",
        "tea",
        "laundry",
        "oven",
        "cooking",
        "workout",
        "nap",
        "cookie",
        "rice",
        "bread",
        "homework",
        "meditation",
    ],  # fmt: skip
    # politeness
    "please": ["please", "could you", "can you", "would you", "hey house", "okay house"],
    "thanks": ["please", "thanks", "thank you", "now"],
}

_SLOTS = {
    "percent", "volume", "channel", "temperature", "degrees_change", "oven_temperature", "time",
    "date", "calendar_day", "duration", "snooze_time", "room", "light", "color", "door", "blind",
    "appliance", "climate_device",
    "scene", "genre", "artist", "playlist", "media_source", "speaker", "city", "weather_when",
    "condition", "gear", "event", "person", "item", "list_name", "task", "timer_label",
}  # fmt: skip

_P, _T = "[<please>]", "[<thanks>]"  # optional polite opening and closing

_INTENTS: list[Intent] = [
    # lights
    Intent("lights_on", "lights", (
        f"{_P} (turn | switch) on the [<room>] <light> {_T}",
        f"{_P} (turn | switch) the [<room>] <light> on {_T}",
        f"{_P} (turn | switch) on the <light> in the <room> {_T}",
        "lights on [in the <room>]",
        "it's too dark in the <room>",
    )),
    Intent("lights_off", "lights", (
        f"{_P} (turn | switch) off the [<room>] <light> {_T}",
        f"{_P} (turn | switch) the [<room>] <light> off {_T}",
        f"{_P} (turn | switch) off the <light> in the <room> {_T}",
        "lights off [in the <room>]",
        "turn off all the lights [<daypart>]",
    )),
    Intent("lights_brightness", "lights", (
        f"{_P} (set | dim | turn) the [<room>] <light> to <percent> {_T}",
        f"{_P} set the brightness [in the <room>] to <percent> {_T}",
        f"{_P} (dim | brighten) the <light> in the <room> to <percent> {_T}",
        "<room> <light> (at | to) <percent>",
    )),
    Intent("lights_dimmer", "lights", (
        f"{_P} (dim | lower) the [<room>] <light> [a bit | a little] {_T}",
        f"{_P} make the [<room>] <light> (dimmer | darker | less bright) {_T}",
        "it's too bright in the <room>",
    )),
    Intent("lights_brighter", "lights", (
        f"{_P} (brighten | raise) the [<room>] <light> [a bit | a little] {_T}",
        f"{_P} make the [<room>] <light> brighter {_T}",
        "more light in the <room> [please]",
    )),
    Intent("lights_color", "lights", (
        f"{_P} (set | change | turn | make) the [<room>] <light> [to] <color> {_T}",
        f"{_P} change the color of the [<room>] <light> to <color> {_T}",
        "<color> light in the <room>",
    )),
    Intent("scene_activate", "scenes", (
        f"{_P} (activate | start | turn on) [the] <scene> (scene | mode) {_T}",
        "(switch | change) to <scene> mode",
        "set the house to <scene> mode",
    )),
    # heating and cooling
    Intent("temperature_set", "climate", (
        f"{_P} set the (temperature | thermostat | heating) [in the <room>] to <temperature> {_T}",
        f"{_P} make it <temperature> in the <room> {_T}",
        "i'd like it to be <temperature> [in the <room> | in here]",
        "(heat | cool) the <room> to <temperature>",
    )),
    Intent("temperature_up", "climate", (
        f"{_P} (turn up | raise | increase) the (heat | heating | temperature | thermostat)"
        f" [in the <room>] [by <degrees_change>] {_T}",
        f"{_P} make it warmer [in the <room>] {_T}",
        "it's (too | a bit | really | freezing) cold in (here | the <room>)",
    )),
    Intent("temperature_down", "climate", (
        f"{_P} (turn down | lower | decrease) the (heat | heating | temperature | thermostat)"
        f" [in the <room>] [by <degrees_change>] {_T}",
        f"{_P} make it (cooler | colder) [in the <room>] {_T}",
        "it's (too | a bit | really) (hot | warm) in (here | the <room>)",
    )),
    Intent("climate_on", "climate", (
        f"{_P} (turn | switch) on the [<room>] <climate_device> {_T}",
        f"{_P} (turn | switch) the [<room>] <climate_device> on {_T}",
        "start the <climate_device> [in the <room>]",
    )),
    Intent("climate_off", "climate", (
        f"{_P} (turn | switch) off the [<room>] <climate_device> {_T}",
        f"{_P} (turn | switch) the [<room>] <climate_device> off {_T}",
        "stop the <climate_device> [in the <room>]",
    )),
    Intent("temperature_query", "climate", (
        "what's the temperature [in the <room> | inside | in here]",
        "what is the temperature [in the <room> | inside | in here]",
        "how (warm | cold | hot) is it in (here | the <room>)",
        "what is the thermostat set to",
        "what's the (heating | thermostat) set to [in the <room>]",
    )),
    # timers and alarms
    Intent("timer_set", "timers", (
        f"{_P} set a [<timer_label>] timer for <duration> {_T}",
        f"{_P} start a [<timer_label>] timer for <duration> {_T}",
        "<duration> timer [please]",
        "(time | count down) <duration>",
        "set the timer to <duration>",
    )),
    Intent("timer_cancel", "timers", (
        f"{_P} (cancel | stop | delete | turn off) the [<timer_label>] timer {_T}",
        "cancel all (the | my) timers",
        "never mind the [<timer_label>] timer",
    )),
    Intent("timer_query", "timers", (
        "how much time is left [on the [<timer_label>] timer]",
        "how long until the [<timer_label>] timer goes off",
        "how long is left on my [<timer_label>] timer",
    )),
    Intent("alarm_set", "alarms", (
        f"{_P} set an alarm for <time> [<date>] {_T}",
        f"{_P} wake me up at <time> [<date>] {_T}",
        f"{_P} set my alarm for <time> [<date>] {_T}",
        "i need to get up at <time> [<date>]",
        "alarm for <time> [<date>]",
    )),
    Intent("alarm_cancel", "alarms", (
        f"{_P} (cancel | delete | remove | turn off) (my | the) alarm [for <time>] {_T}",
        "i don't need an alarm <date>",
        "cancel all my alarms",
    )),
    Intent("alarm_snooze", "alarms", (
        "snooze [for <snooze_time>]",
        "snooze the alarm [for <snooze_time>]",
        "give me <snooze_time> more",
    )),
    # media
    Intent("music_play", "media", (
        f"{_P} play [some] <genre> [music] [in the <room>] {_T}",
        f"{_P} play [something by | music by | songs by] <artist> [in the <room>] {_T}",
        f"{_P} put on [some] <genre> [music] {_T}",
        f"{_P} play my <playlist> playlist [in the <room>] {_T}",
        "i want to hear (some <genre> | <artist>)",
    )),
    Intent("media_source", "media", (
        f"{_P} play <media_source> [in the <room>] {_T}",
        "put on <media_source>",
        "i'd like to listen to <media_source>",
    )),
    Intent("media_pause", "media", (
        f"{_P} (pause | stop) [the music | playback | the song] {_T}",
        "stop playing",
        "be quiet",
    )),
    Intent("media_resume", "media", (
        f"{_P} (resume | continue | unpause) [the music | playback | the song] {_T}",
        "(continue | keep) playing",
        "play it again",
    )),
    Intent("media_next", "media", (
        f"{_P} (skip | next) [song | track] {_T}",
        "play the next (song | track)",
        "skip this (song | track | one)",
    )),
    Intent("media_previous", "media", (
        "(previous | last) (song | track)",
        "go back [a song | a track]",
        "play the (previous | last) (song | track) again",
    )),
    Intent("volume_set", "media", (
        f"{_P} set the volume [on the <speaker>] to <volume> {_T}",
        "volume <volume>",
        "turn the volume to <volume>",
    )),
    Intent("volume_up", "media", (
        f"{_P} turn (it | the volume | the music | the <speaker>) up [a bit | a little] {_T}",
        "louder [please]",
        "i can't hear (it | the music)",
    )),
    Intent("volume_down", "media", (
        f"{_P} turn (it | the volume | the music | the <speaker>) down [a bit | a little] {_T}",
        "(quieter | softer) [please]",
        "the music is too loud",
    )),
    Intent("media_channel", "media", (
        f"{_P} (switch | change | go) to channel <channel> {_T}",
        "put on channel <channel>",
        "channel <channel>",
    )),
    Intent("device_on", "media", (
        f"{_P} (turn | switch) on the <speaker> [in the <room>] {_T}",
        "<speaker> on [in the <room>]",
    )),
    Intent("device_off", "media", (
        f"{_P} (turn | switch) off the <speaker> [in the <room>] {_T}",
        "<speaker> off [in the <room>]",
    )),
    # locks and doors
    Intent("lock", "locks", (
        f"{_P} lock the <door> {_T}",
        "lock (all the doors | up | everything)",
        "make sure the <door> is locked",
    )),
    Intent("unlock", "locks", (
        f"{_P} unlock the <door> {_T}",
        "let me in",
        "unlock (all the doors | everything)",
    )),
    Intent("door_open", "locks", (
        f"{_P} open the <door> {_T}",
        "let the (dog | cat) out",
    )),
    Intent("door_close", "locks", (
        f"{_P} (close | shut) the <door> {_T}",
        "(close | shut) the <door> (for me | behind me)",
    )),
    Intent("door_status", "locks", (
        "is the <door> (locked | open | closed | shut)",
        "did i lock the <door>",
        "are all the doors locked",
        "check (if | whether) the <door> is (locked | open)",
    )),
    # blinds
    Intent("blinds_open", "blinds", (
        f"{_P} (open | raise | pull up) the [<room>] <blind> {_T}",
        f"{_P} open the <blind> in the <room> {_T}",
        "let some light in [the <room>]",
    )),
    Intent("blinds_close", "blinds", (
        f"{_P} (close | lower | shut | draw | pull down) the [<room>] <blind> {_T}",
        f"{_P} close the <blind> in the <room> {_T}",
    )),
    Intent("blinds_set", "blinds", (
        f"{_P} (set | open | close) the [<room>] <blind> to <percent> {_T}",
        f"{_P} open the [<room>] <blind> halfway {_T}",
        "<room> <blind> (at | to) <percent>",
    )),
    # appliances
    Intent("appliance_on", "appliances", (
        f"{_P} (start | turn on | switch on | run) the <appliance> {_T}",
        f"{_P} (turn | switch) the <appliance> on {_T}",
    )),
    Intent("appliance_off", "appliances", (
        f"{_P} (stop | turn off | switch off) the <appliance> {_T}",
        f"{_P} (turn | switch) the <appliance> off {_T}",
    )),
    Intent("appliance_status", "appliances", (
        "is the <appliance> (done | finished | still running | on | off)",
        "how long until the <appliance> is (done | finished | ready)",
        "did i leave the <appliance> on",
    )),
    Intent("oven_preheat", "appliances", (
        f"{_P} preheat the oven to <oven_temperature> {_T}",
        f"{_P} set the oven to <oven_temperature> {_T}",
        "heat the oven to <oven_temperature>",
    )),
    Intent("vacuum_room", "appliances", (
        f"{_P} vacuum the <room> {_T}",
        f"{_P} send the robot vacuum to the <room> {_T}",
        "clean the <room> [floor]",
    )),
    # weather
    Intent("weather_query", "weather", (
        "what's the weather [like] [<weather_when>] [in <city>]",
        "what is the weather [going to be] like [<weather_when>] [in <city>]",
        "what's the forecast for [<city>] (today | tomorrow | the weekend | next week)",
        "how (hot | cold | warm) (is it | will it be) [<weather_when>] [in <city>]",
        "what's the temperature outside",
    )),
    Intent("weather_condition", "weather", (
        "is it going to <condition> [<weather_when>] [in <city>]",
        "will it <condition> [<weather_when>] [in <city>]",
        "do i need <gear> [<weather_when>]",
        "should i (take | bring) <gear> [<weather_when>]",
    )),
    # calendar
    Intent("calendar_query", "calendar", (
        "what's on my calendar [<date>]",
        "what do i have [going on] <date>",
        "do i have any (meetings | appointments | plans) <date>",
        "when is my next (meeting | appointment)",
        "what's my schedule [for] (today | tomorrow | this week | next week)",
    )),
    Intent("calendar_add", "calendar", (
        f"{_P} add <event> [with <person>] to my calendar <date> at <time> {_T}",
        f"{_P} (schedule | book) <event> [with <person>] <date> at <time> {_T}",
        f"{_P} put <event> on my calendar <date> {_T}",
        "i have <event> [with <person>] <date> at <time>",
    )),
    Intent("calendar_cancel", "calendar", (
        f"{_P} (cancel | delete | remove) <event> [with <person>] [<date>] {_T}",
        "take <event> off my calendar",
    )),
    # shopping lists
    Intent("shopping_add", "shopping", (
        f"{_P} add <item> to (my | the) <list_name> {_T}",
        f"{_P} put <item> [and <item>] on (my | the) <list_name> {_T}",
        "we're (out of | running low on) <item>",
        "i need to buy <item>",
    )),
    Intent("shopping_remove", "shopping", (
        f"{_P} (remove | delete | take) <item> (from | off) (my | the) <list_name> {_T}",
        "i already bought <item>",
    )),
    Intent("shopping_read", "shopping", (
        "what's on (my | the) <list_name>",
        "read me (my | the) <list_name>",
        "what do i need to buy",
        "is <item> on (my | the) <list_name>",
    )),
    Intent("shopping_clear", "shopping", (
        f"{_P} (clear | empty | delete) (my | the) <list_name> {_T}",
        "start a new <list_name>",
    )),
    # reminders
    Intent("reminder_set", "reminders", (
        f"{_P} remind me to <task> [<date>] at <time> {_T}",
        f"{_P} remind me to <task> in <duration> {_T}",
        f"{_P} remind me <date> to <task> {_T}",
        f"{_P} set a reminder to <task> [<date>] [at <time>] {_T}",
        "don't let me forget to <task> [<date>]",
    )),
    Intent("reminder_query", "reminders", (
        "what are my reminders [<date>]",
        "do i have any reminders [<date>]",
        "read me my reminders",
    )),
    Intent("reminder_cancel", "reminders", (
        f"{_P} (cancel | delete | remove) the reminder to <task> {_T}",
        "delete all my reminders",
        "i don't need a reminder to <task> anymore",
    )),
    # times and dates
    Intent("time_query", "time", (
        "what time is it [now | right now]",
        "what's the time [now | right now]",
        "do you know what time it is",
        "tell me the time [please]",
        "what time is it in <city>",
    )),
    Intent("date_query", "time", (
        "what's the date [today]",
        "what's today's date",
        "what day is it [today]",
        "what day of the week is <calendar_day>",
        "what's the date (tomorrow | next <weekday> | this <weekday>)",
        "how many days until <calendar_day>",
    )),
]  # fmt: skip


def smart_home_grammar(
    sampling_exponent: float = 0.5, optional_probability: float = 0.4
) -> Grammar:
    """The embedded smart-home voice-assistant grammar: 58 intents in 14 domains."""
    return Grammar(_INTENTS, _RULES, _SLOTS, sampling_exponent, optional_probability)
