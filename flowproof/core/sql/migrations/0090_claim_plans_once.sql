-- The claim (migrations 0060 and 0080) is planned once per session, never with a sequential
-- scan, and never JIT-compiled. Three settings of the function, each for a failure measured on
-- the relay at a steady 1,000 events/s (docs/benchmarks.md, 2026-12-02):
--
-- jit = off. The claim turns `enable_sort` off (see 0080), which puts a penalty of 10^10 on the
-- estimate of any plan that sorts. A claim of empty rounds (a wake-up that finds nothing new)
-- still gets such a plan (a one-time-false walk under a sort), far above `jit_above_cost`, and
-- the server JIT-compiled it: about 200 ms of CPU for a statement that then runs in 0.1 ms,
-- several times a minute, each time a latency spike for the events behind it.
--
-- plan_cache_mode = force_generic_plan. PL/pgSQL plans its statements with the parameters of
-- the first calls, then keeps a generic plan or plans every call anew, whichever its estimates
-- favour at that moment. Planning every call cost more than the claim itself (0.3 ms for each of
-- two statements), and a plan made while the outbox was nearly empty stayed while it grew.
--
-- enable_seqscan = off. That plan read the whole outbox: a claim took 0.6 ms over an empty
-- table and 14.6 ms after 170,000 rows, until an ANALYZE happened to replace it. Every table
-- the claim reads has an index for each of its reads; with sequential scans penalised, the one
-- generic plan uses them whatever the table's size or statistics.
ALTER FUNCTION {{outbox}}_claim(text, smallint[], integer, bigint, bigint, boolean)
    SET jit = off;
ALTER FUNCTION {{outbox}}_claim(text, smallint[], integer, bigint, bigint, boolean)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION {{outbox}}_claim(text, smallint[], integer, bigint, bigint, boolean)
    SET enable_seqscan = off;
