"""Results: room on each page for claims to update rows in place, and one index fewer.

A claim changes only unindexed columns, so on PostgreSQL it can be a HOT update
(no new index entries) when the row's page has room: a fillfactor of 70 leaves it.
The scan's own index on results is dropped: the two indexes that start with the
scan serve every query by scan, and each index costs every write.
"""

from django.db import migrations, models
import django.db.models.deletion


def set_fillfactor(apps, schema_editor, percent):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE scans_result SET (fillfactor = {percent})")


class Migration(migrations.Migration):
    dependencies = [("scans", "0003_result_fetched_by")]

    operations = [
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
        migrations.RunPython(
            lambda apps, editor: set_fillfactor(apps, editor, 70),
            lambda apps, editor: set_fillfactor(apps, editor, 100),
        ),
    ]
