-- What a ticket shows a person besides its state (issue 16, item 8): the hint their listing
-- showed for the account ("z***g"), carried in the account ref they sent and kept with the
-- ticket, so a client can say "Sim Bank 4, z***g: completed" without keeping the listing. Sealed
-- with the stored-data key like the account id, bound to the ticket's account key; gone with the
-- ticket (retention, erasure). Tickets from before this column have '' and show no hint.
ALTER TABLE tickets ADD COLUMN sealed_hint TEXT NOT NULL DEFAULT '';
