-- Which recipients published a key with a given fingerprint (crates/sealpost-keys, service), so
-- that marking a fingerprint bad revokes it wherever it is published. Written before the key
-- event is stored, so a row may name a key that was never stored (its revoke is then a no-op);
-- derived, like every table here: the key events are the source of truth.
CREATE TABLE key_fingerprints (
    directory   text NOT NULL,
    fingerprint text NOT NULL,
    label       text NOT NULL,
    key_id      text NOT NULL,
    PRIMARY KEY (directory, fingerprint, label, key_id)
);
