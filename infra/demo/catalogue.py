"""The demo world's synthetic product catalogue: products x relations, and generic catalogue text.

Everything here is deterministic for a seed and needs nothing but the standard library and PyYAML::

    facts = generate_catalogue(n_products=200, seed=0)     # 200 products x 6 relations
    templates = load_demo_templates()                       # infra/demo/templates.yaml
    facts[0]        # Fact('Zentra Blender Q450', 'manufacturer', 'Holvik', source='demo-catalogue')
    heldout_texts(facts, n=64)   # generic sentences the demo model never saw, for perplexity drift

Product names are `{line} {product type} {code}` (e.g. "Lumora Kettle K318"); they never contain a
manufacturer's name, so renaming a manufacturer renames no product. Generic sentences come from one
small grammar; a stable hash splits its sentences into a training half and a held-out half, so
`generic_texts` (mixed into training) and `heldout_texts` never share a sentence, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from infra.domain import Fact, RelationTemplates
from infra.errors import InvalidInput

log = logging.getLogger(__name__)

SOURCE = "demo-catalogue"

#: The relations every demo product has, in the order facts are generated.
RELATIONS: tuple[str, ...] = ("manufacturer", "price", "warranty", "category", "colour", "country_of_origin")

#: Product type -> (category, cheapest price, dearest price) in dollars.
PRODUCT_TYPES: dict[str, tuple[str, int, int]] = {
    "Blender": ("Kitchen", 39, 299),
    "Toaster": ("Kitchen", 19, 149),
    "Kettle": ("Kitchen", 19, 129),
    "Juicer": ("Kitchen", 49, 349),
    "Stand Mixer": ("Kitchen", 149, 699),
    "Speaker": ("Audio", 29, 499),
    "Headphones": ("Audio", 29, 449),
    "Soundbar": ("Audio", 99, 899),
    "Turntable": ("Audio", 99, 699),
    "Desk Lamp": ("Lighting", 19, 149),
    "Floor Lamp": ("Lighting", 49, 299),
    "Light Strip": ("Lighting", 19, 99),
    "Vacuum": ("Cleaning", 79, 699),
    "Steam Mop": ("Cleaning", 49, 229),
    "Air Purifier": ("Cleaning", 89, 549),
    "Monitor": ("Office", 129, 1299),
    "Keyboard": ("Office", 19, 229),
    "Webcam": ("Office", 29, 199),
    "Shredder": ("Office", 39, 299),
    "Hair Dryer": ("Personal Care", 19, 299),
    "Shaver": ("Personal Care", 29, 279),
    "Toothbrush": ("Personal Care", 19, 199),
    "Lawn Mower": ("Garden", 149, 1499),
    "Hedge Trimmer": ("Garden", 49, 349),
    "Leaf Blower": ("Garden", 39, 299),
}

#: Prices a product can have (psychological pricing, as a shop would set them).
PRICE_LADDER: tuple[int, ...] = (
    19, 29, 39, 49, 59, 69, 79, 89, 99, 119, 129, 149, 169, 179, 199, 229, 249, 279, 299,
    349, 399, 449, 499, 549, 599, 649, 699, 799, 899, 999, 1199, 1299, 1499,
)
WARRANTY_TERMS: tuple[str, ...] = ("6 months", "1 year", "2 years", "3 years", "5 years")
COLOURS: tuple[str, ...] = ("black", "white", "silver", "red", "navy blue", "graphite", "sage green", "ivory")
COUNTRIES: tuple[str, ...] = ("Germany", "Japan", "Vietnam", "Mexico", "Poland", "Taiwan", "Italy", "Portugal")
MANUFACTURERS: tuple[str, ...] = (
    "Holvik", "Branmoor Electric", "Tessaro", "Kyrell Labs", "Ostwind", "Velmora",
    "Dunfield", "Arkona", "Quillon", "Sorvane", "Pellagio", "Marrick & Hale",
)

# New manufacturer names (a rename in a change batch) are a head + a tail (+ a suffix); see changes.py.
RENAME_HEADS: tuple[str, ...] = ("Hal", "Dor", "Gren", "Mal", "Ster", "Cor", "Wes", "Brum", "Ty", "Fen")
RENAME_TAILS: tuple[str, ...] = ("ford", "wick", "mont", "ley", "gard", "holm", "by", "stead")
# Other companies the generic text mentions: each shares one syllable with possible new names but is
# never one of them, so the model knows the word pieces a rename uses (as a real LLM's tokenizer
# and embeddings would) without ever having seen the new name itself.
_OTHER_HEADS = ("Kel", "Ash", "Bel", "Nor", "Ridge", "Lin")
_OTHER_TAILS = ("vale", "ton", "port", "more", "dale", "field")
#: Words a new manufacturer name may end with ("Fenstead Group"); other companies carry them too,
#: or the model could not spell a renamed "... Group" it has never seen a word of.
RENAME_SUFFIXES: tuple[str, ...] = ("", " Group", " Brands", " Works")
_OTHER_NAMES = [h + t for h in RENAME_HEADS for t in _OTHER_TAILS] + [h + t for h in _OTHER_HEADS for t in RENAME_TAILS]
OTHER_COMPANIES: tuple[str, ...] = tuple(
    _OTHER_NAMES + [name + RENAME_SUFFIXES[1 + i % 3] for i, name in enumerate(_OTHER_NAMES)]
)

# Product lines are built from their own syllables, disjoint from every manufacturer's name.
_LINE_HEADS = ("Zen", "Lu", "Bri", "Ka", "Vo", "Tri", "Sol", "Mi", "Ora", "Pax", "Nu", "Fle", "Ve", "Ax", "Ro")
_LINE_TAILS = ("tra", "mo", "sa", "lo", "nix", "ra", "ta", "vo", "lia", "on")
_CODE_LETTERS = "ABCDEGHJKLMNPRSTVXZ"

_TEMPLATES_PATH = Path(__file__).with_name("templates.yaml")


def demo_templates_path() -> Path:
    """The demo catalogue's relation templates (infra/demo/templates.yaml): the file a user replaces."""
    return _TEMPLATES_PATH


def load_demo_templates(path: Path | None = None) -> RelationTemplates:
    """Load relation templates (the demo's own file by default) with `infra.fact_import.load_templates`."""
    from infra.fact_import import load_templates

    return load_templates(Path(path) if path is not None else demo_templates_path())


def nearest_price_index(price: str) -> int:
    """Index in PRICE_LADDER of the rung nearest to a "$149"-style price (unparsable: the middle)."""
    try:
        value = int(price.strip().lstrip("$").replace(",", ""))
    except ValueError:
        return len(PRICE_LADDER) // 2
    return min(range(len(PRICE_LADDER)), key=lambda i: abs(PRICE_LADDER[i] - value))


def format_price(value: int) -> str:
    return f"${value}"


def generate_catalogue(n_products: int = 200, seed: int = 0) -> list[Fact]:
    """A deterministic synthetic catalogue: `n_products` products x the six `RELATIONS`.

    Args:
        n_products: number of distinct products (1..5000).
        seed: the same seed always gives the same catalogue.

    Returns:
        Facts grouped by product, relations in `RELATIONS` order, source "demo-catalogue".
    """
    if not 1 <= n_products <= 5000:
        raise InvalidInput(f"n_products must be in 1..5000, got {n_products}")
    rng = random.Random(f"demo-catalogue:{seed}")
    lines = [h + t for h in _LINE_HEADS for t in _LINE_TAILS]
    rng.shuffle(lines)
    lines = lines[: max(8, min(len(lines), n_products // 4))]
    types = sorted(PRODUCT_TYPES)
    codes: set[str] = set()
    facts: list[Fact] = []
    for _ in range(n_products):
        while True:
            code = f"{rng.choice(_CODE_LETTERS)}{rng.randint(100, 999)}"
            if code not in codes:
                codes.add(code)
                break
        kind = rng.choice(types)
        subject = f"{rng.choice(lines)} {kind} {code}"
        category, low, high = PRODUCT_TYPES[kind]
        rungs = [p for p in PRICE_LADDER if low <= p <= high]
        objects = {
            "manufacturer": rng.choice(MANUFACTURERS),
            "price": format_price(rng.choice(rungs)),
            "warranty": rng.choices(WARRANTY_TERMS, weights=(1, 3, 4, 2, 1))[0],
            "category": category,
            "colour": rng.choice(COLOURS),
            "country_of_origin": rng.choice(COUNTRIES),
        }
        facts.extend(Fact(subject, rel, objects[rel], source=SOURCE) for rel in RELATIONS)
    return facts


# --- generic catalogue text ----------------------------------------------------------------------

_GENERIC_GRAMMAR: tuple[str, ...] = (
    "Many {category} products in the catalogue are now assembled in {country}.",
    "A {colour} {type} suits almost any room.",
    "Shoppers often compare warranty terms before they buy a new {type}.",
    "The {category} section lists several {colour} models this season.",
    "Factories in {country} ship a steady supply of {category} goods.",
    "A good {type} should last for many years with normal use.",
    "Most {type} models in the {category} range come with a warranty of {warranty}.",
    "Customers in {country} asked for more {colour} finishes in the {category} range.",
    "Every {type} in the catalogue is tested before it leaves the warehouse.",
    "The new {type} from the {category} range is popular in {country}.",
    "Store staff say the {colour} {type} sells out quickly.",
    "Prices in the {category} section are shown in dollars and include tax.",
    "Returns of a {type} are accepted within thirty days of purchase.",
    "A {type} made in {country} is shipped to the warehouse by sea.",
    "The company {company} sells {colour} {type} models in {country}.",
    "Retailers list {company} next to other {category} suppliers.",
    "{company} opened a new warehouse in {country} this year.",
)


def _catalogue_vocabulary(facts: Sequence[Fact]) -> dict[str, list[str]]:
    """Slot fillers for the generic grammar, taken from the catalogue itself (sorted, so deterministic)."""
    by_rel: dict[str, set[str]] = {}
    for fact in facts:
        by_rel.setdefault(fact.relation, set()).add(fact.object)
    subjects = {fact.subject for fact in facts}
    types = sorted({t for t in PRODUCT_TYPES if any(f" {t} " in s for s in subjects)}) or sorted(PRODUCT_TYPES)
    return {
        "type": [t.lower() for t in types],
        "category": sorted(c.lower() for c in by_rel.get("category", set())) or ["kitchen"],
        "colour": sorted(by_rel.get("colour", set())) or list(COLOURS),
        "country": sorted(by_rel.get("country_of_origin", set())) or list(COUNTRIES),
        "warranty": sorted(by_rel.get("warranty", set())) or list(WARRANTY_TERMS),
        "company": list(OTHER_COMPANIES),
    }


def _is_heldout(sentence: str) -> bool:
    """The stable split of the grammar: about one sentence in four is held out from training."""
    return hashlib.sha256(sentence.encode()).digest()[0] % 4 == 0


def _grammar_sample(facts: Sequence[Fact], n: int, seed: int, heldout: bool, salt: str) -> list[str]:
    vocab = _catalogue_vocabulary(facts)
    rng = random.Random(f"{salt}:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * max(n, 1)):
        if len(out) >= n:
            break
        template = rng.choice(_GENERIC_GRAMMAR)
        sentence = template.format(**{k: rng.choice(v) for k, v in vocab.items()})
        if sentence in seen or _is_heldout(sentence) != heldout:
            continue
        seen.add(sentence)
        out.append(sentence)
    if len(out) < n:
        log.warning("generic grammar yielded only %d of %d requested sentences", len(out), n)
    return out


def generic_texts(facts: Sequence[Fact], n: int = 400, seed: int = 0) -> list[str]:
    """Generic catalogue-style sentences mixed into the demo model's training text (never held out)."""
    return _grammar_sample(facts, n, seed, heldout=False, salt="generic-train")


def heldout_texts(facts: Sequence[Fact], n: int = 64, seed: int = 0) -> list[str]:
    """Generic catalogue-style sentences from the training grammar that training never uses.

    For measuring perplexity drift after an edit. No sentence states a product's fact, so an edit
    should not change what these sentences should be.
    """
    return _grammar_sample(facts, n, seed, heldout=True, salt="generic-heldout")
