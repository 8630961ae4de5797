-- get.lua: plain GETs of the URL given to wrk (the ceiling and the counter).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
