-- Which key events each epoch of a tenant's directory holds (crates/sealpost-keys, publisher).
-- Before an epoch is committed to the AKD, its range of key events is fixed here: the first
-- publisher to propose epoch N decides its last event's stream sequence, and whoever commits
-- epoch N (that publisher, or the one that takes over after a crash) publishes exactly those
-- events. The epoch log entry repeats the sequence, so a rebuild from the stream alone gives the
-- same epochs and roots.
CREATE TABLE key_epochs (
    directory   text NOT NULL,
    epoch       int8 NOT NULL,
    -- The stream sequence (SEALPOST_KEYS) of the last key event in this epoch.
    through_seq int8 NOT NULL,
    PRIMARY KEY (directory, epoch)
);
