-- Each audited event's signature, as the writer checked it against the
-- trust file: the signer's key id and the verdict (valid, unsigned,
-- invalid, untrusted; empty for what is not signed by design: requests and
-- dead letters). event_log covers every event, decisions carries them for
-- the auditor's usual table. Rows written before this version keep empty
-- values and their version-1 row hash.
-- One column a statement: a replica that finds one added already by another
-- goes on with the next.
ALTER TABLE {{db}}.event_log ADD COLUMN signer_key_id String;
ALTER TABLE {{db}}.event_log ADD COLUMN signature {{lc "String"}};
ALTER TABLE {{db}}.decisions ADD COLUMN signer_key_id String;
ALTER TABLE {{db}}.decisions ADD COLUMN signature {{lc "String"}};
