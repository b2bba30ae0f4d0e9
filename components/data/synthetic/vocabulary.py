"""The catalogue vocabulary of the synthetic marketplace: sizes, categories, brands,
conditions, colours, styles and countries, with how common each is and what it does to a
listing's price and appeal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE_SYSTEMS: dict[str, tuple[str, ...]] = {
    "alpha": ("XS", "S", "M", "L", "XL", "XXL"),
    "waist": ("W26", "W28", "W30", "W32", "W34", "W36", "W38"),
    "eu_shoe": tuple(str(size) for size in range(35, 47)),
    "one_size": ("one size",),
}
#: Population share of each size inside its system (what sellers list, what users wear).
_SIZE_SHARES: dict[str, tuple[float, ...]] = {
    "alpha": (0.09, 0.24, 0.3, 0.2, 0.11, 0.06),
    "waist": (0.08, 0.16, 0.22, 0.22, 0.16, 0.1, 0.06),
    "eu_shoe": (0.03, 0.06, 0.1, 0.12, 0.12, 0.11, 0.1, 0.1, 0.1, 0.08, 0.05, 0.03),
    "one_size": (1.0,),
}
SIZE_TOKENS: tuple[tuple[str, str], ...] = tuple(
    (system, size) for system, sizes in SIZE_SYSTEMS.items() for size in sizes
)


@dataclass(frozen=True)
class _Category:
    name: str
    share: float
    #: Log of the typical price (EUR) of a mid-tier listing in good condition.
    base_log_price: float
    #: (subcategory, size system, log-price offset).
    subcategories: tuple[tuple[str, str, float], ...]


CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "tops",
        0.2,
        np.log(12.0),
        (
            ("t-shirt", "alpha", -0.2),
            ("shirt", "alpha", 0.1),
            ("blouse", "alpha", 0.05),
            ("sweater", "alpha", 0.25),
            ("hoodie", "alpha", 0.2),
            ("cardigan", "alpha", 0.2),
        ),
    ),
    _Category(
        "bottoms",
        0.15,
        np.log(18.0),
        (
            ("jeans", "waist", 0.1),
            ("trousers", "waist", 0.0),
            ("skirt", "alpha", -0.1),
            ("shorts", "alpha", -0.3),
        ),
    ),
    _Category(
        "dresses",
        0.11,
        np.log(20.0),
        (
            ("mini dress", "alpha", -0.1),
            ("midi dress", "alpha", 0.05),
            ("maxi dress", "alpha", 0.1),
            ("jumpsuit", "alpha", 0.0),
        ),
    ),
    _Category(
        "outerwear",
        0.1,
        np.log(35.0),
        (
            ("jacket", "alpha", 0.0),
            ("coat", "alpha", 0.3),
            ("denim jacket", "alpha", -0.1),
            ("puffer jacket", "alpha", 0.2),
            ("blazer", "alpha", -0.1),
            ("trench coat", "alpha", 0.3),
        ),
    ),
    _Category(
        "shoes",
        0.14,
        np.log(30.0),
        (
            ("sneakers", "eu_shoe", 0.0),
            ("boots", "eu_shoe", 0.2),
            ("heels", "eu_shoe", 0.0),
            ("sandals", "eu_shoe", -0.3),
            ("loafers", "eu_shoe", 0.05),
        ),
    ),
    _Category(
        "bags",
        0.09,
        np.log(25.0),
        (
            ("tote bag", "one_size", 0.0),
            ("crossbody bag", "one_size", 0.05),
            ("backpack", "one_size", 0.0),
            ("clutch", "one_size", -0.1),
            ("shoulder bag", "one_size", 0.1),
        ),
    ),
    _Category(
        "accessories",
        0.13,
        np.log(10.0),
        (
            ("scarf", "one_size", 0.0),
            ("hat", "one_size", -0.1),
            ("belt", "one_size", 0.0),
            ("sunglasses", "one_size", 0.3),
            ("jewellery", "one_size", 0.1),
            ("wallet", "one_size", 0.1),
        ),
    ),
    _Category(
        "sportswear",
        0.08,
        np.log(15.0),
        (
            ("leggings", "alpha", -0.1),
            ("track jacket", "alpha", 0.15),
            ("sports bra", "alpha", -0.2),
            ("running top", "alpha", -0.1),
            ("tracksuit", "alpha", 0.25),
        ),
    ),
)
CATEGORY_NAMES = tuple(category.name for category in CATEGORIES)

#: Log-price offset of each brand tier relative to a mid-tier brand.
TIER_LOG_PRICE = {"none": -0.45, "budget": -0.35, "mid": 0.1, "premium": 0.8, "luxury": 2.1}
NO_BRAND = "No brand"
#: Share of listings without a brand, whatever the category.
_NO_BRAND_SHARE = 0.18

_FASHION = ("tops", "bottoms", "dresses", "outerwear", "accessories")
_SPORT = ("shoes", "sportswear", "tops", "outerwear", "bags", "accessories")
#: (brand, tier, categories it makes), most popular first (popularity ~ 1 / rank).
BRANDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Zara", "budget", (*_FASHION, "shoes", "bags")),
    ("H&M", "budget", (*_FASHION, "sportswear")),
    ("Nike", "mid", _SPORT),
    ("Adidas", "mid", _SPORT),
    ("Shein", "budget", _FASHION),
    ("Mango", "mid", (*_FASHION, "shoes", "bags")),
    ("Levi's", "mid", ("bottoms", "outerwear", "tops")),
    ("Primark", "budget", (*_FASHION, "shoes", "sportswear")),
    ("Bershka", "budget", (*_FASHION, "shoes")),
    ("Pull&Bear", "budget", (*_FASHION, "shoes")),
    ("Uniqlo", "mid", ("tops", "bottoms", "outerwear", "accessories")),
    ("Stradivarius", "budget", (*_FASHION, "shoes")),
    ("Converse", "mid", ("shoes",)),
    ("Vans", "mid", ("shoes", "tops", "accessories")),
    ("New Balance", "mid", ("shoes", "sportswear")),
    ("Tommy Hilfiger", "mid", (*_FASHION, "bags")),
    ("Ralph Lauren", "premium", ("tops", "bottoms", "outerwear", "dresses", "accessories")),
    ("The North Face", "premium", ("outerwear", "sportswear", "bags", "tops")),
    ("Dr. Martens", "mid", ("shoes", "bags")),
    ("Puma", "mid", ("shoes", "sportswear", "tops")),
    ("COS", "mid", _FASHION),
    ("Massimo Dutti", "mid", (*_FASHION, "shoes")),
    ("Carhartt", "mid", ("tops", "bottoms", "outerwear", "accessories")),
    ("Calvin Klein", "mid", (*_FASHION, "bags")),
    ("Lacoste", "premium", ("tops", "shoes", "outerwear", "sportswear")),
    ("Decathlon", "budget", ("sportswear", "shoes", "outerwear", "bags")),
    ("Birkenstock", "mid", ("shoes",)),
    ("Veja", "mid", ("shoes",)),
    ("& Other Stories", "mid", _FASHION),
    ("Arket", "mid", _FASHION),
    ("Sézane", "premium", ("tops", "dresses", "bottoms", "outerwear", "bags")),
    ("Sandro", "premium", ("tops", "dresses", "bottoms", "outerwear")),
    ("Maje", "premium", ("tops", "dresses", "bottoms", "outerwear", "bags")),
    ("Ganni", "premium", ("tops", "dresses", "bottoms", "outerwear", "shoes")),
    ("Patagonia", "premium", ("outerwear", "sportswear", "tops", "bags")),
    ("Barbour", "premium", ("outerwear",)),
    ("Longchamp", "premium", ("bags", "accessories")),
    ("Ray-Ban", "premium", ("accessories",)),
    ("Acne Studios", "premium", ("tops", "bottoms", "outerwear", "accessories")),
    ("Stone Island", "premium", ("tops", "outerwear", "bottoms")),
    ("Michael Kors", "premium", ("bags", "accessories", "shoes")),
    ("Burberry", "luxury", ("outerwear", "accessories", "bags", "tops")),
    ("Gucci", "luxury", ("bags", "accessories", "shoes", "tops")),
    ("Prada", "luxury", ("bags", "shoes", "accessories")),
    ("Louis Vuitton", "luxury", ("bags", "accessories")),
    ("Saint Laurent", "luxury", ("bags", "shoes", "accessories")),
    ("Chanel", "luxury", ("bags", "accessories", "shoes")),
    ("Hermès", "luxury", ("bags", "accessories")),
)
#: Brand vocabulary: the branded ones, then NO_BRAND last.
BRAND_NAMES = (*(brand for brand, _, _ in BRANDS), NO_BRAND)

CONDITIONS = ("new_with_tags", "like_new", "good", "fair")
_CONDITION_SHARES = (0.12, 0.33, 0.42, 0.13)
_CONDITION_LOG_PRICE = (0.3, 0.12, 0.0, -0.35)
#: Better condition, better photos: a small boost to a listing's appeal to everyone.
_CONDITION_APPEAL = (0.25, 0.1, 0.0, -0.35)

COLOURS = (
    "black",
    "white",
    "blue",
    "grey",
    "beige",
    "navy",
    "brown",
    "green",
    "red",
    "pink",
    "multicolour",
    "yellow",
    "purple",
    "orange",
)
_COLOUR_SHARES = (0.2, 0.1, 0.12, 0.08, 0.08, 0.06, 0.06, 0.06, 0.05, 0.06, 0.06, 0.03, 0.02, 0.02)

#: Latent styles; a listing's style shows only through the words of its title (sometimes).
STYLES: dict[str, tuple[str, ...]] = {
    "vintage": ("Vintage", "Retro", "90s"),
    "streetwear": ("Oversized", "Streetwear", "Baggy"),
    "minimalist": ("Minimalist", "Basic", "Clean-cut"),
    "boho": ("Boho", "Floral", "Flowy"),
    "sporty": ("Sporty", "Athletic", "Performance"),
    "classic": ("Classic", "Timeless", "Tailored"),
    "y2k": ("Y2K", "Low-rise", "Glitter"),
    "preppy": ("Preppy", "Collegiate", "Striped"),
}
STYLE_NAMES = tuple(STYLES)
_STYLE_SHARES = (0.16, 0.15, 0.15, 0.1, 0.12, 0.14, 0.1, 0.08)
#: Share of titles that carry a style word.
_STYLE_IN_TITLE = 0.75

COUNTRIES = ("FR", "DE", "IT", "ES", "GB", "NL", "PL", "BE")
_COUNTRY_SHARES = (0.3, 0.15, 0.12, 0.12, 0.1, 0.08, 0.07, 0.06)


def _normalised(shares: tuple[float, ...] | list[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(shares, dtype=float)
    return values / values.sum()
