"""The run report (``recpipe report``): what Evaluate records for it (:mod:`.data`, numpy only, runs
in the Evaluate Lambda), where the report finds its inputs (:mod:`.sources`, local work directory or
AWS) and the self-contained HTML page with SVG plots (:mod:`.page`, matplotlib, never in a Lambda)."""
