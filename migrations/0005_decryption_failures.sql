-- `decryption_failed` reports (a recipient's device could not open the payload): how many, and
-- the latest one's reason and instant. A report leaves the status as it is.
ALTER TABLE messages
    ADD COLUMN decryption_failures        integer NOT NULL DEFAULT 0,
    ADD COLUMN last_decryption_failure    text,
    ADD COLUMN last_decryption_failure_at timestamptz;
CREATE INDEX messages_decryption_failed_idx ON messages (tenant, last_decryption_failure_at DESC)
    WHERE decryption_failures > 0;
