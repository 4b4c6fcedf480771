-- An instance row is updated at every step of its orchestration (its history's head and, once,
-- its affinity), a few times within milliseconds of its insert. With full pages, the new version
-- of the row goes to another page and every index of the table gets a new entry; with room left
-- on the page, PostgreSQL keeps the version on the same page and the indexes untouched (a HOT
-- update), since none of the columns a step changes is indexed. Existing pages keep their
-- layout; new rows are inserted with half of each page left free.
ALTER TABLE instances SET (fillfactor = 50);
