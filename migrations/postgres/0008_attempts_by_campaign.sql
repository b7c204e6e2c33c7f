-- The campaign brakes read a campaign's most recent attempts (the same error on the last N
-- distinct contacts, the failure rate of the last settled sends): newest first, by campaign.
CREATE INDEX attempts_campaign ON attempts (campaign_id, id);
