"""The one write path of the mirror: a race-safe bulk upsert of rows into a mirror table.

Rows are ``COPY``-ed into a temporary staging table and merged with one
``INSERT … ON CONFLICT … DO UPDATE … WHERE (columns) IS DISTINCT FROM (new values)``:

* race-safe: concurrent syncs and webhooks writing the same Sparkfly id serialise on the
  unique index instead of failing (the ``get``-then-``create`` race of naive upserts);
* idempotent: a row whose content did not change is not rewritten, so a second sync of the
  same account writes nothing and ``synced_at`` keeps meaning "content last changed";
* fast: ``COPY`` is PostgreSQL's bulk path, and one statement merges a whole page.

Must run inside a transaction (the staging table is dropped on commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, models
from django.utils import timezone
from psycopg import sql
from psycopg.types.json import Jsonb


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def __iadd__(self, other: UpsertResult) -> UpsertResult:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        return self


def upsert_rows(
    model: type[models.Model],
    rows: Iterable[dict],
    *,
    conflict_fields: Sequence[str] = ("sparkfly_id",),
    now: datetime | None = None,
) -> UpsertResult:
    """Insert new rows and update changed ones; rows are dicts of field attnames to values.

    Rows may carry different sets of columns (a column a payload left out is left as it is);
    duplicates of one conflict key keep the last.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("upsert_rows must run inside transaction.atomic()")
    now = now or timezone.now()
    latest: dict[tuple, dict] = {}
    for row in rows:
        latest[tuple(row[name] for name in conflict_fields)] = row
    by_columns: dict[tuple[str, ...], list[dict]] = {}
    for row in latest.values():
        by_columns.setdefault(tuple(sorted(row)), []).append(row)
    result = UpsertResult()
    for columns, group in by_columns.items():
        result += _upsert_group(model, columns, group, conflict_fields, now)
    return result


def _upsert_group(model, columns, rows, conflict_fields, now) -> UpsertResult:
    opts = model._meta
    given = [opts.get_field(name) for name in columns]
    # A new row gets the model default for a column its payload left out; an existing row
    # keeps what it has (only the given columns are compared and updated).
    defaulted = [
        field
        for field in opts.concrete_fields
        if not field.primary_key and field.column != "synced_at" and field not in given
    ]
    fields = given + defaulted
    db_columns = [field.column for field in fields] + ["synced_at"]
    conflict_columns = [opts.get_field(name).column for name in conflict_fields]
    compared = [field.column for field in given if field.column not in conflict_columns]
    json_positions = [i for i, field in enumerate(fields) if isinstance(field, models.JSONField)]
    defaults = [field.get_default() for field in defaulted]

    table = sql.Identifier(opts.db_table)
    stage = sql.Identifier(f"stage_{opts.db_table}")
    column_list = sql.SQL(", ").join(map(sql.Identifier, db_columns))
    statements = [
        sql.SQL("DROP TABLE IF EXISTS pg_temp.{stage}").format(stage=stage),
        sql.SQL("CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA").format(
            stage=stage, cols=column_list, table=table
        ),
    ]
    merge = sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {stage} "
        "ON CONFLICT ({conflict}) DO UPDATE SET {assignments} "
        "WHERE ({old}) IS DISTINCT FROM ({new}) "
        "RETURNING (xmax = 0)"
    ).format(
        table=table,
        cols=column_list,
        stage=stage,
        conflict=sql.SQL(", ").join(map(sql.Identifier, conflict_columns)),
        assignments=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in compared + ["synced_at"]
        ),
        old=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in compared),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in compared),
    )
    # The raw psycopg cursor (Django's wrapper has no COPY); wrap_database_errors turns its
    # errors into Django's, as every other query's are.
    with connection.cursor() as django_cursor, connection.wrap_database_errors:
        cursor = django_cursor.cursor
        for statement in statements:
            cursor.execute(statement)
        copy_statement = sql.SQL("COPY {stage} ({cols}) FROM STDIN").format(stage=stage, cols=column_list)
        with cursor.copy(copy_statement) as copy:
            for row in rows:
                values = [row[name] for name in columns] + defaults
                for i in json_positions:
                    values[i] = Jsonb(values[i])
                values.append(now)
                copy.write_row(values)
        cursor.execute(merge)
        written = [inserted for (inserted,) in cursor.fetchall()]
    created = sum(written)
    updated = len(written) - created
    return UpsertResult(created=created, updated=updated, unchanged=len(rows) - len(written))
