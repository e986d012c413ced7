-- The key directory's AKD storage (crates/sealpost-keys, akd's `Database` trait), one directory
-- per tenant. Like every table here it is derived: the key events on JetStream are the source of
-- truth, and a rebuild from them gives the same epoch roots.

-- The AKD's tree nodes and its azks root record, by akd's binary record id.
CREATE TABLE akd_records (
    directory text  NOT NULL,
    id        bytea NOT NULL,
    record    jsonb NOT NULL,
    PRIMARY KEY (directory, id)
);

-- Each label's value states: one per epoch in which the label changed. The label is a keyed
-- hash of a recipient (never a phone number).
CREATE TABLE akd_values (
    directory text  NOT NULL,
    label     bytea NOT NULL,
    epoch     int8  NOT NULL,
    version   int8  NOT NULL,
    record    jsonb NOT NULL,
    PRIMARY KEY (directory, label, epoch)
);
CREATE INDEX akd_values_version ON akd_values (directory, label, version);
