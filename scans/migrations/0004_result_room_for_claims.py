"""Results: room on each page for claims to update rows in place, and one index fewer.

A claim changes only unindexed columns, so on PostgreSQL it can be a HOT update
(no new index entries) when the row's page has room: a fillfactor of 70 leaves it
(for pages written from now on). The scan's own index on results is dropped: the
two indexes that start with the scan serve every query by scan, and each index
costs every write. The index goes without a table lock (CONCURRENTLY), and the
foreign key is left as it is in the database: only Django's state changes.
"""

import django.db.models.deletion
from django.db import migrations, models

TABLE = "scans_result"


def _scan_index_name(schema_editor) -> str:
    # The name Django gave the foreign key's index when it created the table.
    return schema_editor._create_index_name(TABLE, ["scan_id"])


def drop_scan_index(apps, schema_editor) -> None:
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    name = schema_editor.quote_name(_scan_index_name(schema_editor))
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {name}")


def create_scan_index(apps, schema_editor) -> None:
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    name = schema_editor.quote_name(_scan_index_name(schema_editor))
    schema_editor.execute(f"CREATE INDEX {concurrently}IF NOT EXISTS {name} ON {TABLE} (scan_id)")


def _set_fillfactor(schema_editor, percent: int) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} SET (fillfactor = {percent})")


def leave_room(apps, schema_editor) -> None:
    _set_fillfactor(schema_editor, 70)


def fill_pages(apps, schema_editor) -> None:
    _set_fillfactor(schema_editor, 100)


class Migration(migrations.Migration):
    atomic = False  # CREATE/DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("scans", "0003_result_fetched_by")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="result",
                    name="scan",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="results",
                        to="scans.scan",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_scan_index, create_scan_index)],
        ),
        migrations.RunPython(leave_room, fill_pages),
    ]
