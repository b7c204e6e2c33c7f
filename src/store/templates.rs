//! Templates synced from the provider, per line.

use super::{Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::template::TemplateDef;
use sqlx::Row;

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
        sqlx::query("DELETE FROM templates WHERE line = $1")
            .bind(line)
            .execute(&mut *tx)
            .await?;
        for def in defs {
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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

    /// A template's status changed (webhook): later sends and starts see it.
    pub async fn set_template_status(
        &self,
        name: &str,
        language: &str,
        status: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        self.update_template(name, language, now, "status", status, |def| {
            def.status = status.to_string()
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
        self.update_template(name, language, now, "quality", quality, |def| {
            def.quality = Some(quality.to_string())
        })
        .await
    }

    /// Changes one column of every line's copy of a template, and the same field in its JSON.
    async fn update_template(
        &self,
        name: &str,
        language: &str,
        now: Millis,
        column: &'static str,
        value: &str,
        change: impl Fn(&mut TemplateDef),
    ) -> StoreResult<u64> {
        let rows =
            sqlx::query("SELECT id, components FROM templates WHERE name = $1 AND language = $2")
                .bind(name)
                .bind(language)
                .fetch_all(&self.pool)
                .await?;
        let sql = format!(
            "UPDATE templates SET {column} = $2, components = $3, synced_at = $4 WHERE id = $1"
        );
        let mut n = 0;
        for r in rows {
            let id: i64 = r.try_get(0)?;
            let json: String = r.try_get(1)?;
            let mut def: TemplateDef = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("template: {e}")))?;
            change(&mut def);
            let json = serde_json::to_string(&def)
                .map_err(|e| StoreError::Corrupt(format!("template: {e}")))?;
            sqlx::query(&sql)
                .bind(id)
                .bind(value)
                .bind(json)
                .bind(now)
                .execute(&self.pool)
                .await?;
            n += 1;
        }
        Ok(n)
    }
}
