-- The database's own count of its commits: every write transaction adds one. The high-water
-- mark beside the database (`<database>.last-commit`, src/store/high_water.rs) records the
-- count of the last acknowledged commit; a database found behind it at start has lost
-- acknowledged changes.
CREATE TABLE commits (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL
);
INSERT INTO commits (id, count) VALUES (1, 0);
