"""Facts about VGGSound's label set: the 74 animal classes, by their exact CSV spelling."""

__all__ = ["ANIMAL_LABELS", "ALL_ANIMALS"]

#: The shorthand that, inside a ``download.classes`` group, stands for all 74 animal labels.
ALL_ANIMALS = "@animals"

#: The 74 animal classes of VGGSound's 309, spelled exactly as in ``vggsound.csv``.
ANIMAL_LABELS: tuple[str, ...] = (
    "bird chirping, tweeting", "chicken crowing", "pigeon, dove cooing", "frog croaking",
    "crow cawing", "lions roaring", "pheasant crowing", "dog howling", "mynah bird singing",
    "horse clip-clop", "cat purring", "dog growling", "gibbon howling", "goose honking",
    "dog barking", "owl hooting", "woodpecker pecking tree", "cattle mooing", "canary calling",
    "cricket chirping", "wood thrush calling", "francolin calling", "turkey gobbling",
    "cattle, bovinae cowbell", "dinosaurs bellowing", "dog bow-wow", "chicken clucking",
    "duck quacking", "lions growling", "parrot talking", "cat meowing", "horse neighing",
    "elk bugling", "bee, wasp, etc. buzzing", "sheep bleating", "coyote howling",
    "chimpanzee pant-hooting", "dog whimpering", "black capped chickadee calling", "pig oinking",
    "donkey, ass braying", "mosquito buzzing", "mouse pattering", "magpie calling",
    "barn swallow calling", "dog baying", "cheetah chirrup", "cat growling", "otter growling",
    "alligators, crocodiles hissing", "fox barking", "bird squawking", "bull bellowing",
    "cat hissing", "penguins braying", "elephant trumpeting", "snake hissing", "warbler chirping",
    "chipmunk chirping", "bird wings flapping", "eagle screaming", "goat bleating",
    "mouse squeaking", "ferret dooking", "cat caterwauling", "cuckoo bird calling",
    "chinchilla barking", "sea lion barking", "baltimore oriole calling",
    "fly, housefly buzzing", "whale calling", "cow lowing", "snake rattling", "zebra braying",
)
assert len(ANIMAL_LABELS) == 74 and len(set(ANIMAL_LABELS)) == 74
