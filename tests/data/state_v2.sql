-- A state of schema 2 (with a journal) as blueshift-import 0.1.0 left it when killed
-- after confirming two batches, plus an older payload hash and a dead-lettered record.
BEGIN TRANSACTION;
CREATE TABLE done (
    run_id INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (run_id, lo, hi)
) WITHOUT ROWID;
CREATE TABLE failed (
    run_id INTEGER NOT NULL,
    record INTEGER NOT NULL,
    PRIMARY KEY (run_id, record)
) WITHOUT ROWID;
INSERT INTO "failed" VALUES(1,20);
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    target TEXT NOT NULL,
    confirmed_at REAL NOT NULL,
    done TEXT NOT NULL,
    failed TEXT,
    identifiers TEXT NOT NULL,
    hashes BLOB NOT NULL,
    confirmed INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL,
    checkpoint_bytes INTEGER NOT NULL,
    checkpoint_hash TEXT,
    rejects_through INTEGER NOT NULL,
    rejects_offset INTEGER,
    dead_letter_offset INTEGER
);
INSERT INTO "journal" VALUES(1,1,'t',1.79637386408847236638e+09,'[[1,4]]',NULL,'["u1@example.com","u2@example.com","u3@example.com","u4@example.com"]',X'6F9C59CCA4DD3B508AFE9F2690E7B0C1C65B46B5DE6859EECA22485EE140981BEF302D87D36B3A7A4731A795A0755F70D3BF361B1C277FA901BCE7ED4BAB28F3',4,0,100,'abc',0,NULL,NULL);
INSERT INTO "journal" VALUES(2,1,'t',1.79637386408930349352e+09,'[[5,5],[7,9]]','[6]','["8","u7@example.com","u5@example.com"]',X'8C6D3FFE70C19DFD1A381302643BBD208BA5063BC55BDDE7619A83EC0F32AF9C5CD10FD7436B3BC4B0B3139215B57E9D',3,1,100,'abc',12,34,56);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema_version','2');
CREATE TABLE payloads (
    target TEXT NOT NULL,
    identifier TEXT NOT NULL,
    hash BLOB NOT NULL,
    confirmed_at REAL NOT NULL,
    PRIMARY KEY (target, identifier)
) WITHOUT ROWID;
INSERT INTO "payloads" VALUES('t','u1@example.com',X'00',1.0);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    checkpoint_bytes INTEGER NOT NULL DEFAULT 0,
    checkpoint_hash TEXT,
    content_hash TEXT,
    rejects_path TEXT,
    rejects_through INTEGER NOT NULL DEFAULT 0,
    rejects_offset INTEGER,
    dead_letter_path TEXT,
    dead_letter_offset INTEGER
);
INSERT INTO "runs" VALUES(1,'/data/in.csv',20,1796373864083231187,'{"batch_size":50}','running',4242,1,1.79637386408688640593e+09,1.79637386408688640593e+09,0,0,0,NULL,NULL,NULL,0,NULL,NULL,NULL);
CREATE INDEX runs_by_source ON runs (source, id);
COMMIT;
