"""Many videos, and segments of long ones, over Ray actors (`stdtrt stylize-batch`).

    plan.py     the inputs, the output each gets, the units (videos or segments), the checks before anything
                is written, the settings' key and a segment's warm-up
    record.py   the job record (JSON lines in the output folder): what is done, for --resume
    worker.py   what one worker does: the model loaded once, a video, a segment, the join of segments
    actors.py   Ray started or joined; the workers sized, started, checked against the bundle, stopped
    job.py      the driver: units handed out, bounded retries, the record, progress, the summary

Ray is imported where it is used (the `ray` extra); this package imports the runtime, never the CLI.
"""
