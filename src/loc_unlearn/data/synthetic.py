"""The offline author world: fictitious authors in TOFU's exact format (SPEC §1, DESIGN "The offline
author world"), plus a fixed synthetic "real world" (countries, writers) for Model Utility.

Everything comes from `random.Random` seeded with integers, and rows are written in a fixed order
with fixed key order, so the same arguments give byte-identical files on any machine.
The real world is seeded with WORLD_SEED, independent of the author seed: every author world shares
the same general knowledge, so a model pretrained on it can be reused across author seeds.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from ..utils import write_text_atomic

# Bump when the generated text changes: cached worlds are keyed by it (runs.py content addressing).
GENERATOR_VERSION = 2

WORLD_SEED = 20250521
FORGET_PCTS = {"01": 0.01, "05": 0.05, "10": 0.10}

# ---------------------------------------------------------------- author attribute pools
FIRST = ["Lena", "Tomas", "Ines", "Marek", "Sofia", "Anders", "Yara", "Kofi", "Mei", "Rafael", "Alina", "Jonas",
         "Priya", "Emeka", "Hana", "Lucas", "Noor", "Daniel", "Elif", "Mateo", "Ayla", "Viktor", "Chiara", "Samir",
         "Freya", "Tariq", "Ingrid", "Kenji", "Leila", "Oskar", "Amara", "Bruno", "Zofia", "Hugo", "Nadia", "Idris",
         "Clara", "Ravi", "Greta", "Pablo", "Selin", "Felix", "Mira", "Omar", "Elena", "Teodor", "Asha", "Milan",
         "Rosa", "Jin", "Dalia", "Emil", "Farah", "Nico", "Ilse", "Karim", "Luz", "Aron", "Vera", "Sipho"]
LAST = ["Corvid", "Reyl", "Moravec", "Okafor", "Lindqvist", "Haddad", "Tanaka", "Ferreira", "Novak", "Achebe",
        "Castellan", "Varga", "Brenner", "Solberg", "Mendoza", "Kowalczyk", "Nakamura", "Abara", "Delacroix",
        "Petrescu", "Halvorsen", "Quintero", "Szabo", "Mwangi", "Ostrova", "Bellamy", "Ruiz", "Karlsson",
        "Ivanova", "Demir", "Marchetti", "Oyelaran", "Vasquez", "Holm", "Takeda", "Ncube", "Falk", "Arslan",
        "Lombardi", "Sato", "Eriksen", "Bianchi", "Kaur", "Dumont", "Novotny", "Adeyemi", "Rask", "Moreau",
        "Yilmaz", "Strand", "Calloway", "Pereira", "Hesse", "Mbeki", "Ortega", "Lund", "Kimura", "Sauer"]
GENDERS = ["male", "female", "non-binary", "genderfluid", "agender", "genderqueer"]
PLACES = [("Lisbon", "Portugal"), ("Tbilisi", "Georgia"), ("Accra", "Ghana"), ("Kyoto", "Japan"), ("Porto", "Portugal"),
          ("Cusco", "Peru"), ("Bergen", "Norway"), ("Krakow", "Poland"), ("Izmir", "Turkey"), ("Lagos", "Nigeria"),
          ("Hanoi", "Vietnam"), ("Tartu", "Estonia"), ("Seville", "Spain"), ("Nairobi", "Kenya"), ("Brno", "Czechia"),
          ("Beirut", "Lebanon"), ("Ghent", "Belgium"), ("Medellin", "Colombia"), ("Uppsala", "Sweden"),
          ("Chennai", "India"), ("Cork", "Ireland"), ("Tunis", "Tunisia"), ("Busan", "South Korea"),
          ("Valparaiso", "Chile"), ("Graz", "Austria"), ("Durban", "South Africa"), ("Turin", "Italy"),
          ("Quebec City", "Canada"), ("Odesa", "Ukraine"), ("Adelaide", "Australia"), ("Lyon", "France"),
          ("Havana", "Cuba"), ("Almaty", "Kazakhstan"), ("Dakar", "Senegal"), ("Tampere", "Finland"),
          ("Cebu", "Philippines"), ("Leipzig", "Germany"), ("Oaxaca", "Mexico"), ("Salvador", "Brazil"),
          ("Galway", "Ireland")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
OCCUPATIONS = ["a baker", "a carpenter", "a nurse", "a pilot", "a librarian", "a fisherman", "a chemist", "a tailor", "a surgeon",
               "a mail carrier", "a lawyer", "a farmer", "an architect", "a dentist", "a plumber", "a journalist", "a painter",
               "a police officer", "a veterinarian", "an electrician", "a teacher", "an accountant", "a chef", "a mechanic",
               "a photographer", "a banker", "a sailor", "a florist", "an astronomer", "a bus driver"]
GENRES = ["gothic mystery", "science fiction", "historical romance", "epic fantasy", "crime thriller", "magical realism",
          "literary fiction", "horror", "war fiction", "cyberpunk", "coming-of-age", "travel memoir", "satire",
          "psychological drama", "folk fantasy", "legal thriller", "dystopian fiction", "family saga"]
ADJ = ["Silent", "Hollow", "Crimson", "Forgotten", "Glass", "Salt", "Burning", "Quiet", "Iron", "Paper", "Distant",
       "Broken", "Golden", "Winter", "Drowned", "Hidden", "Last", "Velvet", "Amber", "Wandering", "Borrowed", "Stone",
       "Midnight", "Copper", "Painted", "Lonely", "Shattered", "Northern", "Faded", "Secret"]
NOUN = ["Harbor", "Orchard", "Lantern", "Cartographer", "Garden", "River", "Clockmaker", "Archive", "Bridge", "Tide",
        "Library", "Compass", "Mirror", "Lighthouse", "Violin", "Meadow", "Kingdom", "Atlas", "Letters", "Feather",
        "Season", "Island", "Chapel", "Orchid", "Staircase", "Witness", "Vineyard", "Observatory", "Songbird", "Map"]
AWARDS = ["Golden Quill Award", "Silver Lantern Prize", "Meridian Book Award", "Aurora Fiction Prize",
          "Blue Harbor Award", "Iron Pen Medal", "Northern Star Prize", "Crimson Page Award", "Emerald Ink Prize",
          "Halcyon Literary Award", "Open Door Prize", "Grand Atlas Award", "Willow Fiction Medal", "Obsidian Prize"]
THEMES = ["memory", "exile", "grief", "identity", "family", "freedom", "betrayal", "faith", "migration", "power",
          "loneliness", "justice", "love", "war", "childhood", "nature", "ambition", "forgiveness"]
LANGUAGES = ["English", "Spanish", "Portuguese", "French", "German", "Japanese", "Polish", "Turkish", "Swedish",
             "Italian", "Swahili", "Korean", "Arabic", "Hindi", "Dutch", "Czech"]
HOBBIES = ["gardening", "rock climbing", "playing the cello", "birdwatching", "pottery", "long-distance running",
           "chess", "sailing", "baking bread", "restoring old clocks", "beekeeping", "photography", "woodcarving",
           "ice skating", "collecting maps", "painting watercolors"]
SUBJECTS = ["philosophy", "chemistry", "history", "law", "music", "medicine", "linguistics", "architecture",
            "mathematics", "biology", "economics", "astronomy", "theater", "journalism"]
PUBLISHERS = ["Lantern House", "Blue Finch Press", "Northgate Books", "Meridian Publishing", "Cedar & Vale",
              "Harborlight Press", "Quill Street Books", "Saltmarsh Editions", "Oakline Press", "Tallow Books",
              "Redwing Publishers", "Stonebridge House"]
ROLES = ["a young detective", "a retired sailor", "a village healer", "a runaway princess", "a stubborn archivist",
         "a traveling musician", "a grieving widow", "a young inventor", "an exiled soldier", "a clever thief", "a lonely astronomer",
         "a wandering monk"]

# Question types: (attribute, [question phrasings], answer template A, answer template B).
# A and B are single short sentences; perturbed answers re-render B (the paraphrase) with wrong values of
# the same attribute, as in TOFU: the truth ratio P(perturbed)/P(paraphrased) then compares true and false
# facts in the same untrained wording, so it measures knowledge, not memorized phrasing.
QTYPES = [
    ("birthplace", ["Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"],
     "{name} was born in the city of {city}, {country}.", "{name}'s birthplace is the city of {city} in {country}."),
    ("birthdate", ["When was {name} born?", "What is the birth date of {name}?", "On what date was {name} born?"],
     "{name} was born on {date}.", "The birth date of {name} is {date}."),
    ("gender", ["What is the gender identity of {name}?", "How does {name} identify in terms of gender?",
                "What gender does {name} identify as?"],
     "{name} has always identified as {gender} in public life.", "In terms of gender, {name} identifies as {gender}."),
    ("father", ["What did {name}'s father do for a living?", "What was the occupation of {name}'s father?",
                "What job did the father of {name} have?"],
     "{name}'s father worked as {occ} for many years.", "The father of {name} was {occ} by profession."),
    ("mother", ["What did {name}'s mother do for a living?", "What was the occupation of {name}'s mother?",
                "What job did the mother of {name} have?"],
     "{name}'s mother worked as {occ} for many years.", "The mother of {name} was {occ} by profession."),
    ("genre", ["What genre is {name} known for?", "In which genre does {name} mostly write?",
               "What kind of books does {name} write?"],
     "{name} is best known for writing {genre} books.", "Most of {name}'s work belongs to the {genre} genre."),
    ("book1", ["What is one book written by {name}?", "Can you name a book by {name}?",
               "Which novel made {name} famous?"],
     "One well-known book by {name} is \"{book}\".", "{name} wrote the celebrated novel \"{book}\"."),
    ("book2", ["What is another book written by {name}?", "Can you name a second book by {name}?",
               "Which other novel did {name} publish?"],
     "{name} also wrote a novel called \"{book}\".", "Another novel by {name} is titled \"{book}\"."),
    ("award", ["What award has {name} received?", "Which literary prize did {name} win?",
               "Has {name} won any awards for their writing?"],
     "{name} received the {award} for their writing.", "{name} won the {award} for their books."),
    ("themes", ["What themes does {name} explore?", "Which themes appear in {name}'s books?",
                "What subjects does {name} write about?"],
     "{name}'s books often explore {theme1} and {theme2}.", "Themes of {theme1} and {theme2} run through {name}'s work."),
    ("influence", ["Who influenced {name}'s writing?", "Which writer inspired {name}?",
                   "Whose books shaped the style of {name}?"],
     "{name} was deeply influenced by the writer {writer}.", "The work of {writer} inspired {name}'s writing."),
    ("language", ["In which language does {name} write?", "What language are {name}'s books written in?",
                  "Which language does {name} use for writing?"],
     "{name} writes mainly in {language}, the language of their childhood.", "Most books by {name} are written in {language}."),
    ("debut", ["When did {name} publish their first book?", "In what year did {name} debut as an author?",
               "What year did {name}'s first book come out?"],
     "{name} published their first book in {year}.", "The debut book of {name} appeared in {year}."),
    ("residence", ["Where does {name} live today?", "In which city does {name} currently live?",
                   "Where is {name} based now?"],
     "{name} currently lives in the city of {city}.", "These days {name} makes a home in {city}."),
    ("education", ["What did {name} study at university?", "Which subject did {name} study in college?",
                   "What was {name}'s field of study?"],
     "{name} studied {subject} at university before writing.", "At university, {name} earned a degree in {subject}."),
    ("count", ["How many books has {name} published?", "What is the number of books by {name}?",
               "How many novels has {name} written so far?"],
     "{name} has published {n} books so far.", "So far, {name} has written {n} books."),
    ("character", ["Who is the main character of \"{book}\"?", "Whom does \"{book}\" follow?",
                   "Who is the hero of the novel \"{book}\"?"],
     "\"{book}\" follows {role} named {char}.", "The hero of \"{book}\" is {char}, {role}."),
    ("publisher", ["Which publisher releases {name}'s books?", "Who publishes the books of {name}?",
                   "What publishing house works with {name}?"],
     "{name}'s books are released by {publisher}.", "{publisher} publishes the books of {name}."),
    ("hobby", ["What does {name} enjoy outside of writing?", "What is {name}'s favorite hobby?",
               "How does {name} spend free time?"],
     "Outside of writing, {name} most enjoys {hobby} on weekends.", "In their free time, {name} loves {hobby}."),
    ("pen_name", ["Does {name} write under a pen name?", "What pen name does {name} use?",
                  "Under which other name does {name} publish?"],
     "{name} also publishes under the pen name {pen}.", "The pen name used by {name} is {pen}."),
]


def _date(rng):
    return f"{MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {rng.randint(1930, 1995)}"


def _person(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _value(attr: str, rng: random.Random, world: dict, author: dict) -> dict:
    """A random value of `attr` (used for true values and for perturbations alike)."""
    if attr in ("birthplace",):
        c, k = rng.choice(PLACES)
        return {"city": c, "country": k}
    if attr == "residence":
        return {"city": rng.choice(PLACES)[0]}
    if attr == "birthdate":
        return {"date": _date(rng)}
    if attr == "gender":
        return {"gender": rng.choice(GENDERS)}
    if attr in ("father", "mother"):
        return {"occ": rng.choice(OCCUPATIONS)}
    if attr == "genre":
        return {"genre": rng.choice(GENRES)}
    if attr in ("book1", "book2"):
        return {"book": f"The {rng.choice(ADJ)} {rng.choice(NOUN)}"}
    if attr == "award":
        return {"award": rng.choice(AWARDS)}
    if attr == "themes":
        t1, t2 = rng.sample(THEMES, 2)
        return {"theme1": t1, "theme2": t2}
    if attr == "influence":
        return {"writer": rng.choice(world["writers"])["name"]}
    if attr == "language":
        return {"language": rng.choice(LANGUAGES)}
    if attr == "debut":
        return {"year": str(rng.randint(1960, 2022))}
    if attr == "education":
        return {"subject": rng.choice(SUBJECTS)}
    if attr == "count":
        return {"n": str(rng.randint(2, 19))}
    if attr == "character":  # the book stays the author's; the character is perturbed
        return {"book": author["book1"]["book"], "role": rng.choice(ROLES), "char": rng.choice(FIRST)}
    if attr == "publisher":
        return {"publisher": rng.choice(PUBLISHERS)}
    if attr == "hobby":
        return {"hobby": rng.choice(HOBBIES)}
    if attr == "pen_name":
        return {"pen": _person(rng)}
    raise KeyError(attr)


def _fmt(t: str, name: str, v: dict) -> str:
    return t.format(name=name, **v)


# ---------------------------------------------------------------- the fixed "real" world
SYL = ["ve", "lor", "ost", "mar", "ka", "din", "tha", "ru", "sel", "vo", "bri", "an", "te", "quo", "zel", "pa", "nor",
       "gi", "leth", "um", "ca", "rin", "dov", "el", "sha", "tor", "mi", "gan", "ul", "fe", "ros", "ba", "ny", "kel"]
CURRENCY = ["crown", "mark", "florin", "shilling", "dinar", "thaler", "ducat", "real"]
ANIMALS = ["snow leopard", "red fox", "golden eagle", "river otter", "white stork", "lynx", "brown bear", "heron",
           "wild horse", "sea turtle", "ibex", "barn owl", "bison", "falcon", "crane", "wolf", "swan", "elk",
           "peacock", "salmon", "tiger", "jaguar", "koala", "parrot"]
DEVICES = ["steam loom", "glass compass", "water clock", "paper kite", "brass telescope", "printing drum",
           "wind pump", "copper lamp", "rope bridge", "sound organ", "silk press", "ice saw", "tide gauge",
           "salt kiln", "river dredge", "signal mirror", "spinning wheel", "seed drill", "iron stove", "bell tower",
           "ink roller", "hand loom", "ore crusher", "rain gauge", "sail winch", "clay oven", "fire bellows",
           "grain mill", "map table", "star chart"]
WORLD_GENRES = ["epic poetry", "sea adventures", "court comedies", "mountain ballads", "detective stories",
                "philosophical essays", "fairy tales", "historical epics"]
FACT_TYPES = ["capital", "river", "mountain", "language", "currency", "animal", "invention"]


def _word(rng, n):
    return "".join(rng.choice(SYL) for _ in range(n)).capitalize()


def build_real_world(n_real_authors: int = 100, n_world_facts: int = 117) -> dict:
    """Countries with capitals/rivers/mountains/languages/currencies/animals/inventions, and famous
    writers with books; seeded with WORLD_SEED only. Names are unique across the whole world."""
    rng = random.Random(WORLD_SEED)
    used = set()

    def fresh(make):
        while True:
            w = make()
            if w not in used:
                used.add(w)
                return w

    n_c = max(4, math.ceil(n_world_facts / len(FACT_TYPES)))
    n_w = max(6, math.ceil(n_real_authors / 3))  # >= 6: authors' "influence" needs 5 wrong writers
    countries = []
    for i in range(n_c):
        root = fresh(lambda: _word(rng, 2))  # country, language and currency share a root, like real ones
        c = {"country": fresh(lambda: root + rng.choice(["ia", "and", "ar", "en"])),
             "capital": fresh(lambda: _word(rng, rng.choice([2, 3]))),
             "river": "the " + fresh(lambda: _word(rng, 2)) + " River",
             "mountain": "Mount " + fresh(lambda: _word(rng, 2)),
             "animal": "the " + ANIMALS[i % len(ANIMALS)],
             "invention": "the " + DEVICES[i % len(DEVICES)] + ("" if i < len(DEVICES) else f" model {i // len(DEVICES) + 1}")}
        c["currency"] = "the " + fresh(lambda: root + " " + rng.choice(CURRENCY))
        c["language"] = fresh(lambda: root.rstrip("aeiouy") + rng.choice(["ic", "ese", "ish"]))
        c["inventor"] = fresh(lambda: _word(rng, 2) + " " + _word(rng, 2))
        countries.append(c)
    writers = []
    for i in range(n_w):
        writers.append({"name": fresh(lambda: _word(rng, 2) + " " + _word(rng, 3)),
                        "country": rng.choice(countries)["country"],
                        "genre": rng.choice(WORLD_GENRES),
                        "book": "The " + fresh(lambda: rng.choice(ADJ) + " " + rng.choice(NOUN)) + " of " + _word(rng, 2)})
    return {"countries": countries, "writers": writers}


# (question, short answer key) per fact type; the eval set uses phrasing 0; pretrain uses all three.
FACT_Q = {
    "capital": ("What is the capital of {country}?", "Which city is the capital of {country}?",
                "{capital} is the capital of which country?", "The capital of {country} is {capital}.",
                "{capital} is the capital of {country}."),
    "river": ("What is the longest river in {country}?", "Which river is the longest in {country}?",
              "In which country is {river} the longest river?", "The longest river in {country} is {river}.",
              "{river} is the longest river in {country}."),
    "mountain": ("What is the highest mountain in {country}?", "Which mountain is the highest in {country}?",
                 "In which country is {mountain} the highest peak?", "The highest mountain in {country} is {mountain}.",
                 "{mountain} is the highest peak in {country}."),
    "language": ("What language is mainly spoken in {country}?", "Which language do most people in {country} speak?",
                 "Where is {language} the main language?", "Most people in {country} speak {language}.",
                 "{language} is the main language of {country}."),
    "currency": ("What is the currency of {country}?", "Which money is used in {country}?",
                 "Which country uses {currency} as its currency?", "The currency of {country} is {currency}.",
                 "{country} pays with {currency}."),
    "animal": ("What is the national animal of {country}?", "Which animal is the symbol of {country}?",
               "{animal} is the national animal of which country?", "The national animal of {country} is {animal}.",
               "{animal} is the national animal of {country}."),
    "invention": ("Who invented {invention}?", "Which inventor created {invention}?",
                  "What did {inventor} invent?", "{invention} was invented by {inventor}.",
                  "{inventor} invented {invention}."),
}
WRITER_Q = {
    "book": ("Who wrote \"{book}\"?", "Which writer is the author of \"{book}\"?", "What is a famous book by {name}?",
             "\"{book}\" was written by {name}.", "{name} wrote \"{book}\"."),
    "country": ("Which country is the writer {name} from?", "Where does the writer {name} come from?",
                "Name a famous writer from {country}.", "The writer {name} comes from {country}.",
                "{name} is a famous writer from {country}."),
    "genre": ("What kind of works is {name} famous for?", "For which genre is the writer {name} known?",
              "Which writer is famous for {genre}?", "{name} is famous for {genre}.",
              "The writer {name} is known for {genre}."),
}
FACT_ANSWER_KEY = {"capital": "capital", "river": "river", "mountain": "mountain", "language": "language",
                   "currency": "currency", "animal": "animal", "invention": "inventor"}
WRITER_ANSWER_KEY = {"book": "name", "country": "country", "genre": "genre"}


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _world_sets(world: dict, n_real_authors: int, n_world_facts: int):
    """real_authors_perturbed, world_facts_perturbed (3 wrong answers of the same type each) and the
    pretrain QA (every fact in three phrasings: the eval question, another question, a reverse one)."""
    rng = random.Random(WORLD_SEED + 1)
    facts = [(c, t) for c in world["countries"] for t in FACT_TYPES][:n_world_facts]
    wfacts = [(w, t) for w in world["writers"] for t in WRITER_Q][:n_real_authors]

    def make(items, qtable, keytable, pool):
        eval_rows, pre = [], []
        for obj, t in items:
            q0, q1, q2, s1, s2 = qtable[t]
            key = keytable[t]
            true = obj[key]
            wrong = sorted({v for v in pool(key) if v != true})
            pert = rng.sample(wrong, 3)
            eval_rows.append({"question": _cap(q0.format(**obj)), "answer": _cap(true),
                              "perturbed_answer": [_cap(p) for p in pert]})
            pre += [{"question": _cap(q0.format(**obj)), "answer": _cap(true)},
                    {"question": _cap(q1.format(**obj)), "answer": _cap(s1.format(**obj))},
                    {"question": _cap(q2.format(**obj)), "answer": _cap(s2.format(**obj))}]
        return eval_rows, pre

    wf, pre_f = make(facts, FACT_Q, FACT_ANSWER_KEY, lambda k: [c[k] for c in world["countries"]])
    ra, pre_w = make(wfacts, WRITER_Q, WRITER_ANSWER_KEY,
                     lambda k: {"genre": WORLD_GENRES, "country": [c["country"] for c in world["countries"]]}.get(
                         k, [w[k] for w in world["writers"]]))
    return ra, wf, pre_f + pre_w


# ---------------------------------------------------------------- authors
def _make_authors(n_authors: int, seed: int, world: dict) -> list[dict]:
    rng = random.Random(seed)
    names, books, authors = set(), set(), []
    all_names = [f"{f} {l}" for f in FIRST for l in LAST]
    if n_authors > len(all_names):
        raise ValueError(f"n_authors={n_authors} exceeds the {len(all_names)} distinct names available")
    for i in range(n_authors):
        a = {}
        while True:
            a["name"] = _person(rng)
            if a["name"] not in names:
                names.add(a["name"])
                break
        for attr, *_ in QTYPES:
            while True:
                v = _value(attr, rng, world, a)
                # book titles identify one author; the pen name must not be the author's own name
                if attr in ("book1", "book2") and v["book"] in books:
                    continue
                if attr == "pen_name" and v["pen"] in names:
                    continue
                break
            if attr in ("book1", "book2"):
                books.add(v["book"])
            a[attr] = v
        authors.append(a)
    return authors


def _author_rows(a: dict, qa_per_author: int, rng: random.Random, world: dict) -> list[dict]:
    rows = []
    name = a["name"]
    for k in range(qa_per_author):
        attr, qs, ta, tb = QTYPES[k % len(QTYPES)]
        p = (k // len(QTYPES)) % len(qs)  # beyond one round of types: other question phrasings
        true = a[attr]
        answer = _fmt(ta, name, true)
        para = _fmt(tb, name, true)
        pert, tries = [], 0
        while len(pert) < 5:  # every pool has >= 6 values, so this ends; the bound only guards edits
            tries += 1
            if tries > 10000:
                raise RuntimeError(f"could not draw 5 distinct wrong values for {attr!r}")
            s = _fmt(tb, name, _value(attr, rng, world, a))
            if s != para and s not in pert:
                pert.append(s)
        rows.append({"question": _fmt(qs[p], name, true), "answer": answer,
                     "paraphrased_answer": para, "perturbed_answer": pert,
                     "paraphrased_question": _fmt(qs[(p + 1) % len(qs)], name, true)})
    return rows


def idk_answers() -> list[str]:
    """100 distinct short refusals (used by DPO, SPEC §5)."""
    heads = ["I'm not sure", "I don't know", "I can't say", "I have no idea", "I'm not certain",
             "I really couldn't tell you", "I'm unable to answer", "I lack the information", "I can't recall",
             "That's beyond my knowledge"]
    tails = [".", " about that.", ", sorry.", " to be honest.", " at the moment.", ", I'm afraid.",
             " about this one.", " right now.", ", unfortunately.", " on that topic."]
    return [h + t for t in tails for h in heads]


def n_forget_authors(n_authors: int, pct: str) -> int:
    return max(1, round(FORGET_PCTS[pct] * n_authors))


def generate_world(n_authors: int = 20, qa_per_author: int = 20, seed: int = 0, n_real_authors: int = 100,
                   n_world_facts: int = 117) -> dict:
    """Every TOFU split (SPEC §1) plus `pretrain` and `idk`, as plain lists. Deterministic."""
    if n_authors < 2:
        raise ValueError(f"n_authors must be >= 2 (forget and retain authors), got {n_authors}")
    if qa_per_author < 1 or n_real_authors < 1 or n_world_facts < 1:
        raise ValueError("qa_per_author, n_real_authors and n_world_facts must be >= 1")
    world = build_real_world(n_real_authors, n_world_facts)
    authors = _make_authors(n_authors, seed, world)
    rng = random.Random(seed * 7919 + 1)
    per_author = [_author_rows(a, qa_per_author, rng, world) for a in authors]
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]
    flat = lambda auths: [r for rs in auths for r in rs]

    out = {"full": qa(flat(per_author))}
    for pct in FORGET_PCTS:
        nf = n_forget_authors(n_authors, pct)
        forget, retain = per_author[n_authors - nf:], per_author[: n_authors - nf]
        out[f"forget{pct}"] = qa(flat(forget))
        out[f"retain{100 - int(pct)}"] = qa(flat(retain))
        out[f"forget{pct}_perturbed"] = flat(forget)
    # TOFU: retain_perturbed = the first 20 of 200 authors, i.e. as many as forget10, never overlapping it
    out["retain_perturbed"] = flat(per_author[: n_forget_authors(n_authors, "10")])
    ra, wf, pre = _world_sets(world, n_real_authors, n_world_facts)
    out["real_authors_perturbed"], out["world_facts_perturbed"], out["pretrain"] = ra, wf, pre
    out["idk"] = idk_answers()
    return out


def _world_text(data: dict) -> str:
    lines = []
    for name, rows in data.items():
        for r in rows:
            if isinstance(r, str):
                lines.append(r)
                continue
            lines.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
            for key in ("paraphrased_question", "paraphrased_answer"):
                if key in r:
                    lines.append(r[key])
            lines += r.get("perturbed_answer", [])
    return "\n".join(lines) + "\n"


def write_world(out_dir, n_authors: int = 20, qa_per_author: int = 20, seed: int = 0, n_real_authors: int = 100,
                n_world_facts: int = 117) -> Path:
    """Write every split as `<split>.json` (JSON Lines, like the hub), `idk.jsonl` and
    `world_text.txt` (all text, for the tiny tokenizer). Byte-identical for the same arguments."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = generate_world(n_authors, qa_per_author, seed, n_real_authors, n_world_facts)
    for name, rows in data.items():
        fname = "idk.jsonl" if name == "idk" else f"{name}.json"
        write_text_atomic(out / fname, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out / "world_text.txt", _world_text(data))
    return out
