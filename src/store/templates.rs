//! Templates synced from the provider, per line.

use super::{Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::template::TemplateDef;
use sqlx::Row;
use std::collections::HashMap;

/// How a template webhook names its template.
enum TemplateKey<'a> {
    Name(&'a str, &'a str),
    ProviderId(&'a str),
}

/// A `template_category_update`, as the store needs it.
#[derive(Debug, Clone, Copy)]
pub struct CategoryChange<'a> {
    pub template_id: Option<&'a str>,
    pub name: &'a str,
    pub language: &'a str,
    pub new: &'a str,
    pub previous: Option<&'a str>,
    pub correct: Option<&'a str>,
    /// Unix ms of an announced change.
    pub effective_at: Option<Millis>,
}

/// What a listing does not carry but webhooks told us: kept across syncs.
fn carry_over(new: &mut TemplateDef, old: &TemplateDef) {
    if new.correct_category.is_none() && old.category == new.category {
        new.correct_category.clone_from(&old.correct_category);
    }
    if new.previous_category.is_none() && old.category == new.category {
        new.previous_category.clone_from(&old.previous_category);
    }
    if new.category_change_at.is_none() {
        new.category_change_at = old.category_change_at;
    }
    if new.rejected_reason.is_none() && new.status == old.status {
        new.rejected_reason.clone_from(&old.rejected_reason);
    }
}

fn parameter_format(def: &TemplateDef) -> &'static str {
    if def.uses_named_params() {
        "NAMED"
    } else {
        "POSITIONAL"
    }
}

impl Store {
    /// Replaces the line's templates with what the provider listed, in one transaction.
    pub async fn replace_templates(
        &self,
        line: &str,
        defs: &[TemplateDef],
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let mut stored: HashMap<(String, String), TemplateDef> = HashMap::new();
        for r in sqlx::query("SELECT components FROM templates WHERE line = $1")
            .bind(line)
            .fetch_all(&mut *tx)
            .await?
        {
            let json: String = r.try_get(0)?;
            if let Ok(def) = serde_json::from_str::<TemplateDef>(&json) {
                stored.insert((def.name.clone(), def.language.clone()), def);
            }
        }
        sqlx::query("DELETE FROM templates WHERE line = $1")
            .bind(line)
            .execute(&mut *tx)
            .await?;
        for def in defs {
            let mut def = def.clone();
            if let Some(old) = stored.get(&(def.name.clone(), def.language.clone())) {
                carry_over(&mut def, old);
            }
            let json = serde_json::to_string(&def)
                .map_err(|e| StoreError::Corrupt(format!("template {}: {e}", def.name)))?;
            sqlx::query(
                "INSERT INTO templates (line, name, language, provider_id, category, status, quality, parameter_format, components, synced_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (line, name, language) DO UPDATE SET provider_id = excluded.provider_id, category = excluded.category, \
                   status = excluded.status, quality = excluded.quality, parameter_format = excluded.parameter_format, \
                   components = excluded.components, synced_at = excluded.synced_at",
            )
            .bind(line)
            .bind(def.name.as_str())
            .bind(def.language.as_str())
            .bind(def.id.as_deref())
            .bind(def.category.as_str())
            .bind(def.status.as_str())
            .bind(def.quality.as_deref())
            .bind(parameter_format(&def))
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A template this daemon submitted (`templates create`): stored as the provider answered
    /// (PENDING, usually) until the status webhook moves it on. Replaces an older copy.
    pub async fn insert_created_template(
        &self,
        line: &str,
        def: &TemplateDef,
        now: Millis,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(def)
            .map_err(|e| StoreError::Corrupt(format!("template {}: {e}", def.name)))?;
        sqlx::query(
            "INSERT INTO templates (line, name, language, provider_id, category, status, quality, parameter_format, components, synced_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (line, name, language) DO UPDATE SET provider_id = excluded.provider_id, category = excluded.category, \
               status = excluded.status, quality = excluded.quality, parameter_format = excluded.parameter_format, \
               components = excluded.components, synced_at = excluded.synced_at",
        )
        .bind(line)
        .bind(def.name.as_str())
        .bind(def.language.as_str())
        .bind(def.id.as_deref())
        .bind(def.category.as_str())
        .bind(def.status.as_str())
        .bind(def.quality.as_deref())
        .bind(parameter_format(def))
        .bind(json)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn template(
        &self,
        line: &str,
        name: &str,
        language: &str,
    ) -> StoreResult<Option<TemplateDef>> {
        let row = sqlx::query(
            "SELECT components FROM templates WHERE line = $1 AND name = $2 AND language = $3",
        )
        .bind(line)
        .bind(name)
        .bind(language)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let json: String = r.try_get(0)?;
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("template {name} ({language}): {e}")))
        })
        .transpose()
    }

    /// Every synced template, with the line it belongs to.
    pub async fn templates(&self) -> StoreResult<Vec<(String, TemplateDef)>> {
        let rows =
            sqlx::query("SELECT line, components FROM templates ORDER BY line, name, language")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get(1)?;
                let def = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("template: {e}")))?;
                Ok((r.try_get(0)?, def))
            })
            .collect()
    }

    /// A template's status changed (webhook): later sends and starts see it. A REJECTED
    /// status keeps its reason; any other status clears an old one.
    pub async fn set_template_status(
        &self,
        name: &str,
        language: &str,
        status: &str,
        reason: Option<&str>,
        now: Millis,
    ) -> StoreResult<u64> {
        let reason = reason.filter(|r| !r.is_empty() && *r != "NONE");
        self.update_template(TemplateKey::Name(name, language), now, |def| {
            def.status = status.to_string();
            def.rejected_reason = (status == "REJECTED")
                .then(|| reason.map(str::to_string))
                .flatten();
        })
        .await
    }

    /// A `message_template_quality_update`: shown by `templates list` and the API.
    pub async fn set_template_quality(
        &self,
        name: &str,
        language: &str,
        quality: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        self.update_template(TemplateKey::Name(name, language), now, |def| {
            def.quality = Some(quality.to_string())
        })
        .await
    }

    /// A `template_category_update`. Announced: the category stays, the coming one and its time
    /// are kept. Done: the new category replaces the old, which is kept as the previous one.
    /// Webhooks that name only the template id find it by its provider id.
    pub async fn set_template_category(
        &self,
        change: &CategoryChange<'_>,
        now: Millis,
    ) -> StoreResult<u64> {
        let key = match (change.name, change.template_id) {
            ("", Some(id)) => TemplateKey::ProviderId(id),
            (name, _) => TemplateKey::Name(name, change.language),
        };
        self.update_template(key, now, |def| {
            match change.correct {
                Some(correct) => {
                    def.correct_category = Some(correct.to_string());
                    def.category_change_at = change.effective_at.or(Some(now));
                }
                None => {
                    let previous = change
                        .previous
                        .map(str::to_string)
                        .unwrap_or_else(|| def.category.clone());
                    if previous != change.new {
                        def.previous_category = Some(previous);
                    }
                    def.correct_category = None;
                    def.category_change_at = Some(now);
                }
            }
            if !change.new.is_empty() {
                def.category = change.new.to_string();
            }
        })
        .await
    }

    /// Changes every line's copy of a template: its JSON and the columns derived from it.
    async fn update_template(
        &self,
        key: TemplateKey<'_>,
        now: Millis,
        change: impl Fn(&mut TemplateDef),
    ) -> StoreResult<u64> {
        let rows = match key {
            TemplateKey::Name(name, language) => {
                sqlx::query(
                    "SELECT id, components FROM templates WHERE name = $1 AND language = $2",
                )
                .bind(name)
                .bind(language)
                .fetch_all(&self.pool)
                .await?
            }
            TemplateKey::ProviderId(id) => {
                sqlx::query("SELECT id, components FROM templates WHERE provider_id = $1")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut n = 0;
        for r in rows {
            let id: i64 = r.try_get(0)?;
            let json: String = r.try_get(1)?;
            let mut def: TemplateDef = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("template: {e}")))?;
            change(&mut def);
            let json = serde_json::to_string(&def)
                .map_err(|e| StoreError::Corrupt(format!("template: {e}")))?;
            sqlx::query(
                "UPDATE templates SET category = $2, status = $3, quality = $4, components = $5, \
                 synced_at = $6 WHERE id = $1",
            )
            .bind(id)
            .bind(def.category.as_str())
            .bind(def.status.as_str())
            .bind(def.quality.as_deref())
            .bind(json)
            .bind(now)
            .execute(&self.pool)
            .await?;
            n += 1;
        }
        Ok(n)
    }
}
