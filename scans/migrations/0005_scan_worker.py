"""Workers on a scan: the scan's concurrency is shared among the workers fetching it."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('scans', '0004_result_room_for_claims'),
    ]

    operations = [
        migrations.CreateModel(
            name='ScanWorker',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('worker_id', models.CharField(max_length=64)),
                ('lease_until', models.DateTimeField()),
                ('scan', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='workers', to='scans.scan')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('scan', 'worker_id'), name='one_row_per_scan_worker')],
            },
        ),
    ]
