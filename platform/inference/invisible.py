"""What a text to classify may not consist of alone, as one regular-expression character
class: every character of the Basic Multilingual Plane that the encoder's tokenizer drops
(whitespace, control and format characters, the zero-width ones, direction marks, variation
selectors, the private use area, combining marks: it strips accents, so a mark with nothing
to combine with is nothing, in Latin, Hebrew, Arabic, Cyrillic, the Indic scripts alike),
and the few it reads but nobody sees (the Hangul fillers, U+FFFC). Such a text reads as an
empty one to the model, and would be billed as one.

Generated from all-MiniLM-L6-v2's ``tokenizer.json`` (each code point alone, no special
tokens: no token at all); ``tests/workers/test_invisible.py`` holds it to the tokenizer.
The same class is the OpenAPI schema's pattern, so the schema says what the server enforces.
NOTE: characters beyond the Basic Multilingual Plane (tag characters, musical formatting)
are left out: a JSON Schema pattern cannot name them without the regex "u" flag.
"""

# fmt: off
INVISIBLE = (
    r"\x00-\u0020\x7f-\u00a0\u00ad\u0300-\u036f\u0483-\u0487\u0591-\u05bd\u05bf\u05c1"
    r"\u05c2\u05c4\u05c5\u05c7\u0600-\u0605\u0610-\u061a\u061c\u064b-\u065f\u0670"
    r"\u06d6-\u06dd\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed\u070f\u0711\u0730-\u074a"
    r"\u07a6-\u07b0\u07eb-\u07f3\u0816-\u0819\u081b-\u0823\u0825-\u0827\u0829-\u082d"
    r"\u0859-\u085b\u08e3-\u0902\u093a\u093c\u0941-\u0948\u094d\u0951-\u0957\u0962\u0963"
    r"\u0981\u09bc\u09c1-\u09c4\u09cd\u09e2\u09e3\u0a01\u0a02\u0a3c\u0a41\u0a42\u0a47"
    r"\u0a48\u0a4b-\u0a4d\u0a51\u0a70\u0a71\u0a75\u0a81\u0a82\u0abc\u0ac1-\u0ac5\u0ac7"
    r"\u0ac8\u0acd\u0ae2\u0ae3\u0b01\u0b3c\u0b3f\u0b41-\u0b44\u0b4d\u0b56\u0b62\u0b63"
    r"\u0b82\u0bc0\u0bcd\u0c00\u0c3e-\u0c40\u0c46-\u0c48\u0c4a-\u0c4d\u0c55\u0c56\u0c62"
    r"\u0c63\u0c81\u0cbc\u0cbf\u0cc6\u0ccc\u0ccd\u0ce2\u0ce3\u0d01\u0d41-\u0d44\u0d4d"
    r"\u0d62\u0d63\u0dca\u0dd2-\u0dd4\u0dd6\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1"
    r"\u0eb4-\u0eb9\u0ebb\u0ebc\u0ec8-\u0ecd\u0f18\u0f19\u0f35\u0f37\u0f39\u0f71-\u0f7e"
    r"\u0f80-\u0f84\u0f86\u0f87\u0f8d-\u0f97\u0f99-\u0fbc\u0fc6\u102d-\u1030\u1032-\u1037"
    r"\u1039\u103a\u103d\u103e\u1058\u1059\u105e-\u1060\u1071-\u1074\u1082\u1085\u1086"
    r"\u108d\u109d\u115f\u1160\u135d-\u135f\u1680\u1712-\u1714\u1732-\u1734\u1752\u1753"
    r"\u1772\u1773\u17b4\u17b5\u17b7-\u17bd\u17c6\u17c9-\u17d3\u17dd\u180b-\u180e\u18a9"
    r"\u1920-\u1922\u1927\u1928\u1932\u1939-\u193b\u1a17\u1a18\u1a1b\u1a56\u1a58-\u1a5e"
    r"\u1a60\u1a62\u1a65-\u1a6c\u1a73-\u1a7c\u1a7f\u1ab0-\u1abd\u1b00-\u1b03\u1b34"
    r"\u1b36-\u1b3a\u1b3c\u1b42\u1b6b-\u1b73\u1b80\u1b81\u1ba2-\u1ba5\u1ba8\u1ba9"
    r"\u1bab-\u1bad\u1be6\u1be8\u1be9\u1bed\u1bef-\u1bf1\u1c2c-\u1c33\u1c36\u1c37"
    r"\u1cd0-\u1cd2\u1cd4-\u1ce0\u1ce2-\u1ce8\u1ced\u1cf4\u1cf8\u1cf9\u1dc0-\u1df5"
    r"\u1dfc-\u1dff\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u20d0-\u20dc\u20e1"
    r"\u20e5-\u20f0\u2cef-\u2cf1\u2d7f\u2de0-\u2dff\u3000\u302a-\u302d\u3099\u309a\u3164"
    r"\ua66f\ua674-\ua67d\ua69e\ua69f\ua6f0\ua6f1\ua802\ua806\ua80b\ua825\ua826\ua8c4"
    r"\ua8e0-\ua8f1\ua926-\ua92d\ua947-\ua951\ua980-\ua982\ua9b3\ua9b6-\ua9b9\ua9bc\ua9e5"
    r"\uaa29-\uaa2e\uaa31\uaa32\uaa35\uaa36\uaa43\uaa4c\uaa7c\uaab0\uaab2-\uaab4\uaab7"
    r"\uaab8\uaabe\uaabf\uaac1\uaaec\uaaed\uaaf6\uabe5\uabe8\uabed\ue000-\uf8ff\ufb1e"
    r"\ufe00-\ufe0f\ufe20-\ufe2f\ufeff\uffa0\ufff9-\ufffd"
)
# fmt: on
