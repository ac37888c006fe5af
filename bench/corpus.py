"""Message bodies for the benchmark: customer-support chat text.

Bodies are built from sentence templates typical of a support conversation
with their slots (order numbers, products, dates, amounts, names) filled at
random, so that no two bodies are equal but they share the words and
phrasing real support chats share. Deterministic for a given seed.

How well a body compresses depends on the text; this corpus is the one the
wire-size figures in docs/benchmarks.md were measured with.
"""

from __future__ import annotations

import random

PRODUCTS = [
    "wireless headphones", "standing desk", "coffee grinder", "running shoes", "laptop sleeve",
    "air purifier", "office chair", "phone case", "smart watch", "yoga mat", "electric kettle",
    "backpack", "desk lamp", "bluetooth speaker", "winter jacket", "water bottle",
]
CARRIERS = ["UPS", "DHL", "FedEx", "the postal service", "our courier partner"]
NAMES = ["Anna", "Ben", "Carla", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lucia"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
REASONS = ["it arrived damaged", "the size is wrong", "it stopped working after two days",
           "the colour is not what the photos showed", "a part is missing from the box",
           "I was charged twice", "I changed my mind"]

CUSTOMER = [
    "Hi, I ordered the {product} on {date} and it still hasn't arrived.",
    "My order number is {order}.",
    "The tracking page says it was handed to {carrier} on {date} but nothing has moved since.",
    "Could you please check where my parcel is?",
    "I would like to return the {product} because {reason}.",
    "Is it possible to get a refund instead of a replacement?",
    "I paid {amount} with my credit card and I can see the charge on my statement.",
    "The confirmation email went to {email}, which is my old address.",
    "Can you change the delivery address to {street}?",
    "I have been waiting for {days} days now and I need it before the weekend.",
    "Thanks for the quick answer, that helps a lot.",
    "I already tried restarting it and resetting it to factory settings.",
    "The app shows error code {code} when I try to pair it.",
    "Do you have the {product} in stock in another colour?",
    "Could you send me a prepaid return label?",
    "I am not at home during the day, can the courier leave it with a neighbour?",
    "My discount code {coupon} was not applied at checkout.",
    "Is there a warranty on the {product}, and how long is it?",
]
AGENT = [
    "Hello {name}, thank you for contacting us, I am happy to help.",
    "Let me look up order {order} for you, one moment please.",
    "I can see the parcel left our warehouse on {date} with {carrier}.",
    "The carrier reports a delay in your area, the new estimate is {date}.",
    "I have started a return for the {product}; you will receive a label at {email} within the hour.",
    "Your refund of {amount} will be back on your card within {days} business days.",
    "I am sorry about the trouble with your {product}.",
    "I have updated the delivery address to {street}.",
    "Could you send me a photo of the damage so I can open a claim with {carrier}?",
    "I have applied the discount code {coupon} and refunded the difference.",
    "Error code {code} usually means the firmware needs an update; please install the latest version from the app.",
    "The {product} comes with a two-year warranty from the date of delivery.",
    "Is there anything else I can help you with today?",
    "I have added a note to your account so my colleagues can see the history of this case.",
    "We will send a replacement by express shipping at no extra cost.",
    "Please keep the original packaging until the return has been processed.",
]


class Corpus:
    """Random support-chat bodies of an exact length in characters."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _fill(self, template: str) -> str:
        r = self.rng
        return template.format(
            product=r.choice(PRODUCTS),
            date=f"{r.choice(MONTHS)} {r.randint(1, 28)}",
            order=f"#{r.choice('ABCDEFGH')}{r.randint(100000, 999999)}",
            carrier=r.choice(CARRIERS),
            reason=r.choice(REASONS),
            amount=f"{r.randint(9, 480)}.{r.randint(0, 99):02d} EUR",
            email=f"{r.choice(NAMES).lower()}.{r.randint(10, 99)}@example.com",
            street=f"{r.randint(1, 200)} {r.choice(['Oak', 'Mill', 'Station', 'Church', 'Park'])} Street, {r.randint(10000, 99999)} {r.choice(['Berlin', 'Lyon', 'Leeds', 'Porto', 'Graz'])}",
            days=r.randint(2, 14),
            code=f"E{r.randint(10, 99)}",
            coupon=f"SAVE{r.randint(5, 30)}-{r.randint(1000, 9999)}",
            name=r.choice(NAMES),
        )

    def body(self, role: str, length: int) -> str:
        """Sentences in the role's voice, cut to exactly ``length`` characters."""
        templates = CUSTOMER if role == "customer" else AGENT
        parts: list[str] = []
        total = 0
        while total < length:
            s = self._fill(self.rng.choice(templates))
            parts.append(s)
            total += len(s) + 1
        text = " ".join(parts)[:length]
        return text.rstrip() + "." * (length - len(text.rstrip()))
