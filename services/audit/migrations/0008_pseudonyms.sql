-- Keyed pseudonyms of the data subject (issuer + subject): HMAC-SHA256 under
-- the audit's pseudonym key (AIGOV_AUDIT_PSEUDONYM_KEY), "hmac-sha256:<hex>".
-- Auditors group and join rows by person on it; without the key nobody can
-- tell whose it is by hashing candidates. Empty where no key is configured
-- and on rows written before this version. See docs/privacy.md.
-- One column a statement: a replica that finds one added already by another
-- goes on with the next.
ALTER TABLE {{db}}.decisions ADD COLUMN subject_pseudonym String;
ALTER TABLE {{db}}.session_events ADD COLUMN subject_pseudonym String;
