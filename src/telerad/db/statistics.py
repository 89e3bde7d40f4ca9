"""Planner statistics for a small SQLite index: the shape of an archive, written where ANALYZE has too little.

SQLite plans a query from ``sqlite_stat1`` (ANALYZE's figures: rows per table, rows per distinct value of
each index prefix; https://sqlite.org/fileformat2.html#stat1tab). With no figures for a table, as on a new
index or after ANALYZE of an empty one, it assumes that every equality on an indexed column is as selective
as any other, and picks the site's index for the instances of one study: the study's ``/metadata``, its
WADO-RS, QIDO-RS within a study or a series, C-FIND and C-GET by Study Instance UID then walk every instance of
the site. Measured on a copy of a benchmark's index (17,439 instances, one site): a 250-instance study's
metadata lookup 0.29 ms with figures, 12.3 ms without; through HTTP, 1.4-1.9 ms against 8-12 ms until the
server's next ANALYZE (docs/benchmarks.md). Figures measured on a handful of rows are little better: with one
study of 1,000 instances, the site's index and the series' index look equally selective.

So while the index holds fewer than :data:`SEED_BELOW_INSTANCES` instances, :func:`seed` replaces ANALYZE's
figures for the archive's tables with :data:`ARCHIVE_SHAPE`, the shape of an archive in use: UIDs unique,
a few series per study, tens to hundreds of instances per series, many of each per site. The query planner's
checklist suggests exactly this for a database whose content is not yet typical
(https://sqlite.org/queryplanner-ng.html, "Checklist For Avoiding Or Fixing Query Planner Problems"); it is the
relative sizes that steer the plan, not the absolute ones. From that size on, ANALYZE's own figures stay.
"""

from __future__ import annotations

from typing import Any

SEED_BELOW_INSTANCES = 10_000
DEFAULT_ROWS_PER_VALUE = 10  # a column the shape does not name: SQLite's own guess for an equality
# table -> (rows, {column: rows per distinct value})
ARCHIVE_SHAPE: dict[str, tuple[int, dict[str, int]]] = {
    "patients": (200_000, {"site_id": 10_000, "patient_id": 1, "issuer": 200_000}),
    "studies": (400_000, {"site_id": 20_000, "patient_fk": 2, "study_uid": 1, "accession_number": 1,
                          "study_date": 100}),
    "series": (1_600_000, {"site_id": 80_000, "study_fk": 4, "series_uid": 1}),
    "instances": (40_000_000, {"site_id": 2_000_000, "series_fk": 100, "sop_uid": 1, "blob_key": 1}),
}


def shape_rows(conn: Any) -> list[tuple[str, str, str]]:
    """``sqlite_stat1`` rows (table, index, figures) for every index of the archive's tables, from
    :data:`ARCHIVE_SHAPE`: an index prefix is as selective as its most selective column."""
    rows = []
    for table, (n, per_value) in ARCHIVE_SHAPE.items():
        for index in [r[1] for r in conn.exec_driver_sql(f'PRAGMA index_list("{table}")').all()]:
            columns = [r[2] for r in conn.exec_driver_sql(f'PRAGMA index_info("{index}")').all()]
            figures = [n]
            for i in range(len(columns)):
                figures.append(min(per_value.get(c, DEFAULT_ROWS_PER_VALUE) for c in columns[: i + 1]))
            rows.append((table, index, " ".join(str(f) for f in figures)))
    return rows


def seed(conn: Any) -> bool:
    """After ANALYZE, in its transaction: the archive's shape in place of the measured figures while the index
    is small (see the module docstring). Whether it did; connections read the figures when they next load the
    schema."""
    if int(conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one()) >= SEED_BELOW_INSTANCES:
        return False
    rows = shape_rows(conn)
    tables = list(ARCHIVE_SHAPE)
    marks = ",".join("?" * len(tables))
    conn.exec_driver_sql(f"DELETE FROM sqlite_stat1 WHERE tbl IN ({marks})", tuple(tables))
    for row in rows:
        conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", row)
    return True
