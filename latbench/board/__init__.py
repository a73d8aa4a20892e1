"""What is shipped to a board: files that run there alone, importing nothing from latbench.

``board_server.py`` (TVM's RPC protocol on the runtime alone), ``runtime_timer.py`` (times an artifact
set), ``runtime.py`` (finds and loads TVM's runtime libraries), ``timing.py`` (the timing core),
``conditions.py`` (load, clock, temperature), ``tracker_protocol.py`` (TVM's tracker wire protocol) and
``facts.py`` (the board's facts, run as ``python3 - < facts.py``). The first six sit at the root of a
bundle (``latbench bundle``); the host imports the same files as ``latbench.board.<module>``.

A file that needs a sibling loads it with its own few-line ``_sibling()``: the package's module when
imported as part of latbench, else the file beside it (in a bundle, where there is no package).
"""
