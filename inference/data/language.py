"""How synthetic hypotheses and interpretations are phrased.

Hypotheses vary in wording, with and without a severity, the way a
radiologist might type them. Interpretations describe the visual change and
what it indicates, in the style of ICG-CXR's ``changes-of-findings``, with a
fixed vocabulary for direction (new / worsened / improved / resolved /
unchanged) so that finding-level F1 can be scored from the text.
"""

from __future__ import annotations

import numpy as np

from inference.data.findings import FindingSite

SEVERITY_WORDS = {
    "effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "moderate", "large"),
    "cardiomegaly": ("mild", "moderate", "severe"),
    "consolidation": ("mild", "moderate", "extensive"),
    "oedema": ("mild", "moderate", "severe"),
}

SIGNS = {  # (what is seen, its short name)
    "effusion": ("blunting of the {side} costophrenic angle with a meniscus-shaped basal opacity",
                 "{side} basal opacity"),
    "pneumothorax": ("a {side} pleural line with absent lung markings peripherally", "{side} peripheral lucency"),
    "cardiomegaly": ("enlargement of the cardiac silhouette", "cardiac silhouette"),
    "consolidation": ("patchy airspace opacity in the {where} zone", "airspace opacity"),
    "oedema": ("bilateral perihilar haziness with interstitial lines", "perihilar haziness"),
}

HYPOTHESES = {
    "develops": ("A {sev} {thing} develops.", "{Sev} {thing} has developed.", "New {sev} {thing}.",
                 "The patient develops {thing_a}."),
    "worsens": ("The {thing} worsens.", "The {thing} worsens to {sev}.", "The {thing} increases to {sev}.",
                "Worsening {thing}."),
    "improves": ("The {thing} improves.", "The {thing} improves to {sev}.", "The {thing} decreases to {sev}.",
                 "Improving {thing}."),
    "resolves": ("The {thing} resolves.", "Resolution of the {thing}.", "The {thing} has resolved completely."),
    "unchanged": ("The {thing} is unchanged.", "No change in the {thing}.", "The {thing} remains stable."),
}

RESOLVED = {  # what a resolved finding looks like
    "effusion": "The {side} costophrenic angle is sharp again",
    "pneumothorax": "Lung markings reach the {side} chest wall again",
    "cardiomegaly": "The cardiac silhouette is normal in size again",
    "consolidation": "The airspace opacity is no longer seen",
    "oedema": "The perihilar haziness is no longer seen",
}

INTERPRETATIONS = {
    "develops": "New {sign}, indicating a {sev} {thing}.",
    "worsens": "The {short} has increased: the {thing} has worsened from {prev} to {sev}.",
    "improves": "The {short} has decreased: the {thing} has improved from {prev} to {sev}.",
    "resolves": "{resolved}: the {thing} has resolved.",
    "unchanged": "The {short} is unchanged: stable {sev} {thing}.",
}


def finding_phrase(site: FindingSite) -> str:
    """The finding as named in text: 'left pleural effusion', 'consolidation in the right lower zone'."""
    if site.finding == "effusion":
        return f"{site.side} pleural effusion"
    if site.finding == "pneumothorax":
        return f"{site.side} pneumothorax"
    if site.finding == "consolidation" and site.zone is not None:
        return f"consolidation in the {site.zone.replace('_', ' ')} zone"
    if site.finding == "oedema":
        return "pulmonary oedema"
    return site.finding


def severity_word(site: FindingSite, severity: int) -> str:
    return SEVERITY_WORDS[site.finding][max(severity, 1) - 1]


def _fields(site: FindingSite, prior: int, followup: int) -> dict[str, str]:
    thing = finding_phrase(site)
    sev = severity_word(site, followup if followup else prior)
    where = site.zone.replace("_", " ") if site.zone else ""
    sign, short = (s.format(side=site.side or "", where=where) for s in SIGNS[site.finding])
    article = "an" if thing[0] in "aeiou" else "a"
    return {"thing": thing, "thing_a": f"{article} {thing}" if site.finding != "oedema" else thing,
            "sev": sev, "Sev": sev.capitalize(), "prev": severity_word(site, prior), "sign": sign, "short": short,
            "resolved": RESOLVED[site.finding].format(side=site.side or "")}


def hypothesis_text(site: FindingSite, direction: str, prior: int, followup: int, rng: np.random.Generator) -> str:
    templates = HYPOTHESES[direction]
    return templates[int(rng.integers(len(templates)))].format(**_fields(site, prior, followup))


def interpretation_text(site: FindingSite, direction: str, prior: int, followup: int) -> str:
    text = INTERPRETATIONS[direction].format(**_fields(site, prior, followup))
    return text[0].upper() + text[1:]
