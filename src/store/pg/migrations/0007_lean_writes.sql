-- gaffer PostgreSQL schema 7: less written per task (issue 11 item 9; BENCHMARKS.md, "The CPU
-- and WAL of a no-op task on PostgreSQL").

-- The event stream, one row per append (`store::pg::events`): `lines` the events' JSON lines in
-- order, `times` and `job_runs` theirs; the row's events are at `seq`, `seq + 1`… (at
-- `seq + offsets[i]` once retention removed some). The sequence steps by the most events a row
-- holds, so places never collide. A row of schema 6 holds one event in `json` (`lines` NULL).
-- `at_ms`: the row's oldest event's time (what retention's index finds).
ALTER TABLE events
    ALTER COLUMN json DROP NOT NULL,
    ADD COLUMN job_runs bigint[],
    ADD COLUMN times bigint[],
    ADD COLUMN lines text[],
    ADD COLUMN offsets int[];
ALTER SEQUENCE events_seq_seq INCREMENT BY 1024;
-- lz4 where the server has it: a row of a few hundred lines is compressed once (pglz otherwise).
DO $$ BEGIN
    ALTER TABLE events ALTER COLUMN lines SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;

-- Room on each page for a row's next version: the owner's write of a task run that stays
-- `running`, and an attempt's end, then change no indexed column and stay on the page (a HOT
-- update: no index entry, no new page). At the default 100 the page is full and every version
-- goes elsewhere with a new entry in each index.
ALTER TABLE task_runs SET (fillfactor = 70);
ALTER TABLE attempts SET (fillfactor = 70);
