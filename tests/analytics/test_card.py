"""The model card a reviewer reads: intervals on every metric, honest subgroup rows, readable names, rounding, the
promotion decision, the data and its screening, membership inference with and without the defence; and its render
in headless Chromium (Debian's package) to PNG and PDF, checked for content and looked at."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics.evaluate import metrics, plots, subgroup_metrics, write_model_card

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _card(path: Path, *, applied: bool = False) -> Path:
    """A card like registration writes, from scores with a realistic shape (1,500 test rows, 12 % positives);
    ``applied``: the served model uses the membership defence."""
    rng = np.random.default_rng(4)
    n = 1500
    y = (rng.random(n) < 0.12).astype(int)
    prob = 1 / (1 + np.exp(-(rng.normal(-2.4, 1.0, n) + 2.2 * y)))
    frame = pd.DataFrame({"sex": rng.choice(["female", "male"], n),
                          "age_band": np.r_[rng.choice(["40-44", "45-49", "50-54"], n - 4), ["90+"] * 4]})
    threshold = 0.12
    importance = {"obs_4548_4_last": 310.5, "obs_2345_7_last": 120.25, "obs_39156_5_last": 60.125,
                  "age_band_lower": 30.0, "sex_female": 3.3333333333333335}
    robustness = {
        "bounds": {"obs_4548_4_last": 0.3}, "operating_sensitivity": 0.8512345678901234,
        "undefended": {"attacked": 212, "succeeded": 40, "success_rate": 0.18867924528301888,
                       "success_interval": {"low": 0.1416, "high": 0.2469}, "auroc": 0.8799123456789},
        "adversarial_augmentation": {"attacked": 212, "succeeded": 18, "success_rate": 0.0849056603773585,
                                     "success_interval": {"low": 0.054, "high": 0.13}, "auroc": 0.8804, "kept": True},
        "kept_defences": ["adversarial_augmentation"], "applied": ["adversarial_augmentation"] if applied else [],
        "membership_inference": {
            "attack": "black-box membership inference", "members": 276, "non_members": 276, "fpr": 0.01,
            "undefended": {"attack_auroc": 0.6543210987, "attack_auroc_interval": {"low": 0.61, "high": 0.70},
                           "advantage": 0.3086421974, "tpr_at_fpr": 0.0061, "clean_auroc": 0.8861234},
            "defended": {"attack_auroc": 0.5198765, "attack_auroc_interval": {"low": 0.47, "high": 0.57},
                         "advantage": 0.039753, "tpr_at_fpr": 0.0101, "clean_auroc": 0.9051234},
            "defence": {"max_depth": 3, "round_significant": 2}, "applied": applied,
            "served": "defended" if applied else "undefended"},
    }
    return write_model_card(
        path, title="Model card — t2d_within_1y v3",
        summary={"model version": "outcomes-t2d_within_1y-v3", "threshold": threshold,
                 "training tables": {"outcomes": 4, "observations": 7}, "training data SHA-256": "ab" * 32,
                 "parameters": {"learning_rate": 0.1, "scale_pos_weight": 13.871287128712872}},
        test_metrics=metrics(y, prob, threshold), subgroups=subgroup_metrics(frame, y, prob, threshold,
                                                                            ["sex", "age_band"]),
        images=plots(y, prob, threshold, importance),
        sections={"Cross-validation": [{"params": {"max_depth": 3}, "auroc_mean": 0.8734567890123456,
                                        "auroc_folds": [0.8712345678901234, 0.8756789012345678]}],
                  "Poisoning screen": {"batch_id": "b-20261130", "rows": 5200, "flagged": 26,
                                       "reasons": {"label_inconsistent": 20, "outlier": 6}, "accepted": True,
                                       "decision": "accepted", "auroc_without": 0.871234, "auroc_with": 0.872345},
                  "Evasion robustness": robustness, "Features": list(importance)},
        promotion={"decision": "candidate", "reasons": ["AUROC lower bound 0.682 is below the floor 0.700",
                                                         "sensitivity 0.60 at the threshold (target 0.85)"]})


def _text(html_doc: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html_doc)


def test_when_a_card_is_written_then_every_metric_has_an_interval_and_no_number_has_more_than_three_decimals(
        tmp_path):
    doc = _text(_card(tmp_path / "card.html").read_text())
    for label in ("AUROC", "AUPRC", "sensitivity", "specificity", "Brier score", "calibration error (ECE)"):
        assert re.search(rf"<div class='v'>[0-9.]+</div><div>{re.escape(label)}</div><div><span class='ci'>95% CI "
                         r"\d\.\d{3}–\d\.\d{3}</span>", doc), label
    assert not re.search(r"\d\.\d{4,}", doc), re.findall(r".{40}\d\.\d{4,}.{10}", doc)[:3]
    assert "0.871, 0.876" in doc  # cross-validation folds, rounded


def test_when_a_subgroup_is_tiny_then_its_row_is_marked_and_it_is_not_the_flagged_gap(tmp_path):
    doc = _text(_card(tmp_path / "card.html").read_text())
    row = re.search(r"<tr class=small><td>age_band</td><td class=nw>90\+</td><td>4</td>.*?</tr>", doc)
    assert row and "n too small" in row.group(0)
    gap = re.search(r"Largest subgroup gap \(groups of n ≥ 30\).*?</p>", doc).group(0)
    assert "90+" not in gap and re.search(r"intervals (do not )?overlap", gap)


def test_when_the_card_is_written_then_promotion_screening_membership_and_readable_names_are_on_it(tmp_path):
    doc = _text(_card(tmp_path / "card.html").read_text())
    assert "Promotion decision: candidate" in doc and "below the floor 0.700" in doc
    assert "Batch b-20261130: accepted; 26 of 5,200 rows flagged (label_inconsistent: 20, outlier: 6)" in doc
    assert "training data SHA-256" in doc
    privacy = doc[doc.index("Privacy: membership inference"):doc.index("<h2>Evasion robustness")]
    assert re.search(r"<b>as served</b> \(no defence\)</td><td>0\.654 <span class='ci'>95% CI 0\.610–0\.700",
                     privacy)
    assert re.search(r"with the defence \(retrained\)</td><td>0\.520 ", privacy)
    assert "Applied: <b>no</b>" in privacy
    assert "Defences kept (they measurably help): adversarial_augmentation" in doc
    assert "Applied to the served model (the undefended row): none" in doc
    assert "Hemoglobin A1c" in doc and "<code>obs_4548_4_last</code>" in doc


def test_when_the_defences_are_applied_then_the_card_shows_the_served_model_as_the_defended_side(tmp_path):
    doc = _text(_card(tmp_path / "card.html", applied=True).read_text())
    privacy = doc[doc.index("Privacy: membership inference"):doc.index("<h2>Evasion robustness")]
    assert re.search(r"<b>as served</b> \(defence on\)</td><td>0\.520 ", privacy)
    assert re.search(r"without the defence \(retrained\)</td><td>0\.654 ", privacy)
    assert "Applied: <b>yes</b>" in privacy
    assert "Applied to the served model (the undefended row): adversarial augmentation" in doc


def _chromium(args: list[str], tmp_path: Path) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    subprocess.run([CHROMIUM, *flags, *args], check=True, capture_output=True, timeout=120)


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_when_the_card_is_rendered_in_chromium_then_the_png_shows_it_with_the_roc_plot_and_a_pdf_is_written(
        tmp_path):
    import matplotlib.image as mpimg

    card = _card(tmp_path / "card.html")
    assert "id='plot-roc'" in card.read_text()
    png, pdf = tmp_path / "card.png", tmp_path / "card.pdf"
    _chromium([f"--screenshot={png}", "--window-size=1280,4000", card.as_uri()], tmp_path)
    _chromium([f"--print-to-pdf={pdf}", "--no-pdf-header-footer", card.as_uri()], tmp_path)
    pixels = mpimg.imread(io.BytesIO(png.read_bytes()))[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    # Not blank: many distinct colours, and dark text on the page.
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
    assert (pixels.max(axis=2) < 0.3).mean() > 0.002
    # The ROC plot is the only one with the red threshold marker and the matplotlib blue curve beside it.
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.15) & (pixels[..., 2] < 0.15)
    assert red.sum() > 20
    rows, cols = np.nonzero(red)
    top, left = max(rows.min() - 300, 0), max(cols.min() - 300, 0)
    window = pixels[top:rows.max() + 300, left:cols.max() + 300]
    blue = (np.abs(window - np.array([0.122, 0.467, 0.706])) < 0.08).all(axis=2)
    assert blue.sum() > 200
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
