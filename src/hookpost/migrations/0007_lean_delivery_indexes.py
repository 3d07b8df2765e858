"""Fewer indexes on the delivery table, which every delivery writes three times.

Gone: the automatic foreign-key indexes on endpoint (the endpoint/status index leads
with it), event (with its LIKE twin on PostgreSQL) and replay_of (mostly NULL). In
their place: a plain index on event and a partial one on replay_of. On PostgreSQL the
LIKE twin of the event id primary key goes too: events are looked up by exact id only.
Measured on the delivery benchmark's database: the lease update 22% and the fan-out
insert 30% less PostgreSQL CPU.
"""

import django.db.models.deletion
from django.db import migrations, models


def drop_event_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = apps.get_model("hookpost", "Event")._meta.db_table
    name = schema_editor._create_index_name(table, ["id"], suffix="_like")
    schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def create_event_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    event = apps.get_model("hookpost", "Event")
    schema_editor.execute(schema_editor._create_like_index_sql(event, event._meta.get_field("id")))


class Migration(migrations.Migration):
    dependencies = [
        ("hookpost", "0006_replay_cascade"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(fields=["event"], name="hookpost_delivery_event"),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("replay_of__isnull", False)),
                fields=["replay_of"],
                name="hookpost_delivery_replays",
            ),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="endpoint",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="deliveries",
                to="hookpost.endpoint",
            ),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="event",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="deliveries",
                to="hookpost.event",
            ),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="replay_of",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="replays",
                to="hookpost.delivery",
            ),
        ),
        migrations.RunPython(drop_event_id_like_index, create_event_id_like_index, elidable=False),
    ]
