"""The dataset's last step (:func:`finalize`), once every shard is complete: ``labels.parquet``
streamed from the shard tables, then the card (``dataset.json``) and its two figures. The layout
and the columns are in :mod:`nirgan.generation.dataset`, which writes the shards.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nirgan.config import OutputError
from nirgan.generation.dataset import DatasetPlan, label_rows
from nirgan.generation.output import writing
from nirgan.generation.report import contact_sheet, dataset_card, label_distributions
from nirgan.io import atomic_file, write_json
from nirgan.labels import LABELS

log = logging.getLogger("nirgan.generate")


def _table_use(plan: DatasetPlan, used: int) -> dict | None:
    """How many rows of the labels table (or the folder rig's renders) the dataset used, logged
    and returned for the card; None when the rows are drawn from the ranges. A row the count
    never reached is said, never dropped in silence."""
    table = label_rows(plan).table
    if table is None:
        return None
    spec = plan.spec
    what = (f"the folder rig {spec.rig_path}'s renders" if spec.rig == "folder" else
            f"the labels table {spec.labels_table}")
    use = {"table": str(spec.rig_labels or spec.rig_path) if spec.rig == "folder" else str(spec.labels_table),
           "rows": len(table), "used": used, "unused": len(table) - used}
    if use["unused"]:
        log.warning("generate: %d of the %d rows of %s were used, %d were not (count %d, latents_per_source %d: "
                    "--count %d uses every row)", used, len(table), what, use["unused"], plan.count,
                    spec.latents_per_source, len(table) * spec.latents_per_source)
    else:
        log.info("generate: all %d rows of %s were used, 0 were not", len(table), what)
    return use


_BINS = {name: np.linspace(-60.0, 60.0, 49) for name in LABELS}


def finalize(plan: DatasetPlan) -> dict:
    """labels.parquet (streamed from the shard tables), dataset.json, contact_sheet.png and
    label_distributions.png; returns the card. Every shard must be complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [k for k in range(plan.n_shards) if not plan.shard_table(k).exists()]
    if missing:
        raise OutputError(f"{plan.out_dir}: {len(missing)} of {plan.n_shards} shards are not written yet "
                          f"(first: {missing[0]}); run write_shard for them (a rerun of generate does)")
    counts = {"images": 0, "dropped": 0, "overflow": 0}
    hist = {kind: {c: np.zeros(len(_BINS[c]) - 1, np.int64) for c in LABELS} for kind in ("requested", "estimated")}
    abs_error, known = dict.fromkeys(LABELS, 0.0), dict.fromkeys(LABELS, 0)
    glasses, unknown = 0, 0  # unknown: images whose requested labels are unknown (a folder rig without them)
    used = np.zeros(0, np.int64)  # the table rows (labels table or folder rig) the images were made from
    with writing(plan.out_dir, "writing labels.parquet"), atomic_file(plan.out_dir / "labels.parquet") as tmp:
        writer = None
        try:
            for k in range(plan.n_shards):
                shard = pd.read_parquet(plan.shard_table(k))
                table = pa.Table.from_pandas(shard, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
                counts["images"] += len(shard)
                counts["dropped"] += int(shard["rejected"].sum())
                counts["overflow"] += int((shard["overflow"] >= 0).sum())
                used = np.union1d(used, shard["table_row"][shard["table_row"] >= 0].to_numpy(np.int64))
                glasses += int((shard["glasses"] == True).sum())  # noqa: E712 - null is unknown, not False
                unknown += int(shard[[*LABELS, "glasses"]].isna().any(axis=1).sum())
                for c in LABELS:
                    hist["requested"][c] += np.histogram(shard[c].clip(-60, 60), _BINS[c])[0]
                    est = shard[f"estimated_{c}"].dropna()
                    hist["estimated"][c] += np.histogram(est.clip(-60, 60), _BINS[c])[0]
                    abs_error[c] += float(shard[f"error_{c}"].abs().sum())
                    known[c] += int(shard[f"error_{c}"].notna().sum())
        finally:
            if writer is not None:
                writer.close()
    if counts["images"] != plan.count:
        raise OutputError(f"{plan.out_dir}: the shards hold {counts['images']} images, the plan {plan.count}")
    checked = plan.model.get("label_estimator") is not None
    mean_error = {c: abs_error[c] / known[c] if known[c] else None for c in LABELS} if checked else None
    card = dataset_card(plan.spec, plan.model, plan.n_shards, counts, glasses, mean_error, unknown,
                        precision=plan.precision, table_rows=_table_use(plan, len(used)))
    first = pd.read_parquet(plan.shard_table(0), columns=["file"])["file"]
    with writing(plan.out_dir, "writing the card and figures"):
        contact_sheet([plan.out_dir / f for f in first.head(64)], plan.spec.image_size,
                      plan.out_dir / "contact_sheet.png")
        label_distributions(hist, _BINS, plan.spec.glasses_fraction, glasses / counts["images"],
                            plan.out_dir / "label_distributions.png")
        write_json(plan.out_dir / "dataset.json", card)
    return card
