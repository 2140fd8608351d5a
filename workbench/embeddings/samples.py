"""A small labelled set of texts in four domains, for trying the embeddings without the demo data.

Example:
    >>> from workbench.embeddings.samples import sample_texts
    >>> texts, labels = sample_texts()
    >>> len(texts), sorted(set(labels))
    (32, ['code', 'english', 'german', 'math'])
"""

from __future__ import annotations

_SAMPLES = {
    "english": [
        "The quick brown fox jumps over the lazy dog and runs into the quiet green forest.",
        "A small boat drifted slowly across the lake while the sun went down behind the hills.",
        "She opened the old wooden door and found a room full of dusty books and letters.",
        "The children played in the park until their parents called them home for dinner.",
        "Rain fell all night on the roof of the little house at the end of the long road.",
        "He walked to the market every morning to buy fresh bread, milk and a newspaper.",
        "The old dog slept by the fire while the wind howled outside the cold dark window.",
        "They talked for hours about books, music and the places they wanted to visit.",
    ],
    "german": [
        "Der schnelle braune Fuchs springt über den faulen Hund und läuft in den Wald.",
        "Am Morgen gehen die Kinder in die Schule und am Nachmittag spielen sie im Garten.",
        "Die alte Stadt liegt an einem breiten Fluss und hat viele kleine enge Straßen.",
        "Er trinkt jeden Tag eine Tasse Kaffee und liest dabei die Zeitung vom Vortag.",
        "Im Winter ist es hier sehr kalt und der Schnee bleibt oft wochenlang liegen.",
        "Sie hat das Buch schon zweimal gelesen und möchte es ihrem Bruder schenken.",
        "Der Zug nach Berlin fährt um acht Uhr ab und kommt am Mittag in der Stadt an.",
        "Wir wollen am Wochenende in die Berge fahren und dort eine lange Wanderung machen.",
    ],
    "code": [
        "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nresult = add(3, 4)",
        "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue",
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y",
        "import os\nfor name in os.listdir('.'):\n    if name.endswith('.py'):\n        print(name)",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)",
        "values = [x * x for x in range(20) if x % 3 == 0]\ntotal = sum(values)\nprint(total)",
        "with open('data.txt') as f:\n    lines = f.readlines()\ncount = len(lines)\nprint(count)",
        "def mean(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)",
    ],
    "math": [
        "12 + 34 = 46. 56 + 21 = 77. 18 + 47 = 65. 33 + 29 = 62. 71 + 14 = 85.",
        "45 + 45 = 90. 23 + 19 = 42. 67 + 12 = 79. 38 + 44 = 82. 15 + 26 = 41.",
        "11 + 22 = 33. 48 + 37 = 85. 26 + 59 = 85. 64 + 17 = 81. 39 + 13 = 52.",
        "52 + 31 = 83. 17 + 28 = 45. 74 + 19 = 93. 36 + 36 = 72. 21 + 55 = 76.",
        "13 + 46 = 59. 82 + 15 = 97. 29 + 34 = 63. 57 + 24 = 81. 44 + 18 = 62.",
        "68 + 27 = 95. 35 + 42 = 77. 19 + 61 = 80. 53 + 38 = 91. 27 + 16 = 43.",
        "31 + 58 = 89. 46 + 23 = 69. 72 + 21 = 93. 14 + 39 = 53. 65 + 32 = 97.",
        "24 + 43 = 67. 59 + 16 = 75. 37 + 51 = 88. 22 + 47 = 69. 81 + 12 = 93.",
    ],
}


def sample_texts() -> tuple[list[str], list[str]]:
    """``(texts, labels)``: 32 short texts, 8 in each of english, german, code and math."""
    texts = [t for label in _SAMPLES for t in _SAMPLES[label]]
    labels = [label for label in _SAMPLES for _ in _SAMPLES[label]]
    return texts, labels
