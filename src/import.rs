//! Contact import from CSV (SPEC §5.1 `import`, §7).
//!
//! Two streaming passes over the input, so memory stays flat whatever the file size:
//! 1. **check** — delimiter and header, UTF-8 in every field, CSV structure. A file-level
//!    problem (no phone column, bytes that are not UTF-8, broken quoting) stops the import
//!    here with an error naming the line and column, before anything is written.
//! 2. **load** — each row normalised (E.164 through `phonenumber`), bad rows written to
//!    `FILE.rejects.csv` with their line and reason, good rows upserted in batches, one
//!    transaction each: a crash leaves whole batches and a re-run completes the file.

use crate::clock::{Clock, Millis};
use crate::domain::phone::{self, Phone};
use crate::domain::text::normalize;
use crate::store::{BatchCounts, ContactUpsert, Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The largest field accepted; bigger ones are rejected rows, not memory blow-ups.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The most columns a header or row may have, and the most bytes a header or row may take.
/// The CSV parser holds a whole record (and an index entry per field) in memory, so these are
/// checked on the raw bytes before it sees them: a file past them is refused, naming the line.
pub const MAX_COLUMNS: usize = 1000;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_ROW_BYTES: usize = 1024 * 1024;

/// How many rejected rows [`ImportSummary::rejected`] keeps (the count in `invalid` is exact).
pub const MAX_REJECTED_IN_SUMMARY: usize = 100;

const PHONE_HEADERS: &[&str] = &[
    "phone",
    "telefone",
    "telefono",
    "number",
    "msisdn",
    "whatsapp",
    "phone_number",
    "mobile",
    "celular",
];
const NAME_HEADERS: &[&str] = &["name", "nome", "nombre", "full_name"];
const EMAIL_HEADERS: &[&str] = &["email", "e-mail", "mail", "correo"];
const OPT_IN_HEADERS: &[&str] = &["opt_in", "optin", "opt-in", "consent"];
const COUNTRY_HEADERS: &[&str] = &["country", "pais", "country_code"];

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub list: String,
    pub default_country: Option<String>,
    /// `--opt-in`: every contact of this file consented (a per-row `opt_in` column wins).
    pub opt_in: bool,
    pub batch_size: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ImportSummary {
    pub list: String,
    pub rows: u64,
    pub imported: u64,
    pub updated: u64,
    pub duplicate: u64,
    pub invalid: u64,
    pub rejects: Option<PathBuf>,
    /// The first [`MAX_REJECTED_IN_SUMMARY`] rejected rows with their line and reason (the
    /// admin API returns them; the CLI writes every one to the rejects file).
    pub rejected: Vec<RejectedRow>,
    #[serde(skip)]
    pub seconds: f64,
}

/// One refused row: its line in the file and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "list {}: imported {}, updated {}, duplicate {}, invalid {}",
            self.list, self.imported, self.updated, self.duplicate, self.invalid
        )?;
        if let Some(r) = &self.rejects {
            write!(f, " (rejected rows in {})", r.display())?;
        }
        if self.seconds > 0.0 {
            write!(
                f,
                " — {} rows in {:.1}s, {:.0} rows/s",
                self.rows,
                self.seconds,
                self.rows as f64 / self.seconds
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: the file is empty")]
    Empty { file: String },
    #[error("{file}: line 1: no phone column in the header ({found}); name one phone, telefone, telefono, number, msisdn or whatsapp")]
    NoPhoneColumn { file: String, found: String },
    #[error("{file}: line 1: column {column:?} appears twice in the header")]
    DuplicateColumn { file: String, column: String },
    #[error("{file}: line {line}, column {column:?}: bytes that are not UTF-8 (save the file as UTF-8 and import again); nothing was imported")]
    NotUtf8 {
        file: String,
        line: u64,
        column: String,
    },
    #[error("{file}: line {line}: {message}; nothing was imported")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{file}: line {line}: {message}; nothing was imported")]
    TooLarge {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{option}: {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    #[error("{file}: {source}")]
    Store { file: String, source: StoreError },
}

/// Where the rows come from: opened once per pass.
pub trait Source: Send + Sync {
    fn name(&self) -> String;
    fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>>;
    /// Where rejected rows go; `None` to keep them only in the summary count.
    fn rejects_path(&self) -> Option<PathBuf>;
}

pub struct FileSource(pub PathBuf);

impl Source for FileSource {
    fn name(&self) -> String {
        self.0.display().to_string()
    }

    fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(std::fs::File::open(&self.0)?))
    }

    fn rejects_path(&self) -> Option<PathBuf> {
        Some(rejects_path_for(&self.0))
    }
}

/// A CSV held in memory (the `POST /api/lists/{name}/import` body).
pub struct BytesSource<'a> {
    pub name: String,
    pub bytes: &'a [u8],
}

impl Source for BytesSource<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.bytes))
    }

    fn rejects_path(&self) -> Option<PathBuf> {
        None
    }
}

/// A CSV spooled to a temporary file (the `POST /api/lists/{name}/import` body): both passes
/// read it from disk, so memory stays flat whatever the body holds. Deleted when dropped.
pub struct SpooledSource {
    pub name: String,
    pub file: tempfile::NamedTempFile,
}

impl Source for SpooledSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.file.reopen()?))
    }

    fn rejects_path(&self) -> Option<PathBuf> {
        None
    }
}

/// `contacts.csv` → `contacts.rejects.csv`.
pub fn rejects_path_for(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.rejects.csv"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Phone,
    Name,
    Email,
    OptIn,
    Country,
    Field,
}

/// The header, understood.
#[derive(Debug)]
struct Layout {
    delimiter: u8,
    raw_header: Vec<String>,
    columns: Vec<(Role, String)>,
}

fn role_of(normalized: &str) -> Role {
    let is = |names: &[&str]| names.contains(&normalized);
    if is(PHONE_HEADERS) {
        Role::Phone
    } else if is(NAME_HEADERS) {
        Role::Name
    } else if is(EMAIL_HEADERS) {
        Role::Email
    } else if is(OPT_IN_HEADERS) {
        Role::OptIn
    } else if is(COUNTRY_HEADERS) {
        Role::Country
    } else {
        Role::Field
    }
}

/// Skips a UTF-8 byte-order mark, which spreadsheet programs like to write.
fn without_bom<R: Read>(reader: R) -> std::io::Result<BufReader<R>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    if buffered.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        buffered.consume(3);
    }
    Ok(buffered)
}

/// The delimiter that appears most often (outside quotes) in the first line: `,` `;` or tab.
fn sniff_delimiter(first_line: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in first_line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    [b',', b';', b'\t'][best]
}

fn csv_reader<R: Read>(reader: R, delimiter: u8) -> csv::Reader<RecordLimits<R>> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(RecordLimits::new(reader, delimiter))
}

/// A record past [`MAX_COLUMNS`], [`MAX_HEADER_BYTES`] or [`MAX_ROW_BYTES`], found by
/// [`RecordLimits`] and carried to [`csv_error`] inside an I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct RecordTooLarge {
    line: u64,
    message: String,
}

/// Where [`RecordLimits`] is within a record, following the parser's quoting rules: a quote
/// opens a quoted field only at the field's start, and `""` inside one is a literal quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

/// Passes bytes through while following CSV quoting just enough to see where records end,
/// and fails the read once a record has too many columns or bytes: the parser behind it never
/// buffers more than the limits allow.
struct RecordLimits<R> {
    inner: R,
    delimiter: u8,
    state: Quoting,
    /// 1-based line where the current record started, and the line being read.
    record_line: u64,
    line: u64,
    record_bytes: usize,
    columns: usize,
}

impl<R> RecordLimits<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        RecordLimits {
            inner,
            delimiter,
            state: Quoting::FieldStart,
            record_line: 1,
            line: 1,
            record_bytes: 0,
            columns: 1,
        }
    }

    fn scan(&mut self, bytes: &[u8]) -> Result<(), RecordTooLarge> {
        for &b in bytes {
            self.record_bytes += 1;
            if b == b'\n' {
                self.line += 1;
            }
            let end_of_record = b == b'\n' || b == b'\r';
            self.state = match (self.state, b) {
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (Quoting::FieldStart, b'"') | (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                (_, d) if d == self.delimiter => {
                    self.columns += 1;
                    Quoting::FieldStart
                }
                (_, _) if end_of_record => {
                    self.record_line = self.line;
                    self.record_bytes = 0;
                    self.columns = 1;
                    Quoting::FieldStart
                }
                _ => Quoting::Unquoted,
            };
            let (what, max_bytes) = match self.record_line {
                1 => ("the header", MAX_HEADER_BYTES),
                _ => ("the row", MAX_ROW_BYTES),
            };
            if self.columns > MAX_COLUMNS {
                return Err(RecordTooLarge {
                    line: self.record_line,
                    message: format!("{what} has more than {MAX_COLUMNS} columns"),
                });
            }
            if self.record_bytes > max_bytes {
                return Err(RecordTooLarge {
                    line: self.record_line,
                    message: format!("{what} is longer than {max_bytes} bytes"),
                });
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for RecordLimits<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}

fn record_line(record: &csv::ByteRecord) -> u64 {
    record.position().map(|p| p.line()).unwrap_or(0)
}

fn csv_error(file: &str, e: csv::Error) -> ImportError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.into_kind() {
        csv::ErrorKind::Io(source)
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<RecordTooLarge>()) =>
        {
            let too_large = source
                .into_inner()
                .and_then(|inner| inner.downcast::<RecordTooLarge>().ok());
            match too_large {
                Some(t) => ImportError::TooLarge {
                    file: file.to_string(),
                    line: t.line,
                    message: t.message,
                },
                None => ImportError::Csv {
                    file: file.to_string(),
                    line,
                    message: "the record is too large".into(),
                },
            }
        }
        csv::ErrorKind::Io(source) => ImportError::Io {
            file: file.to_string(),
            source,
        },
        other => ImportError::Csv {
            file: file.to_string(),
            line,
            message: format!("{other:?}"),
        },
    }
}

/// Pass 1: understand the header and make sure the whole file is readable UTF-8 CSV.
/// Returns the layout and the number of data rows.
fn check(source: &dyn Source) -> Result<(Layout, u64), ImportError> {
    let file = source.name();
    let io = |source| ImportError::Io {
        file: file.clone(),
        source,
    };
    let mut reader = without_bom(source.open().map_err(io)?).map_err(io)?;
    let first_line = {
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            return Err(ImportError::Empty { file });
        }
        let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        buf[..end].to_vec()
    };
    let delimiter = sniff_delimiter(&first_line);
    let mut csv = csv_reader(reader, delimiter);
    let mut records = csv.byte_records();
    let header = match records.next() {
        None => return Err(ImportError::Empty { file }),
        Some(r) => r.map_err(|e| csv_error(&file, e))?,
    };
    let mut raw_header = Vec::with_capacity(header.len());
    for field in header.iter() {
        let text = std::str::from_utf8(field).map_err(|_| ImportError::NotUtf8 {
            file: file.clone(),
            line: 1,
            column: String::from_utf8_lossy(field).into_owned(),
        })?;
        raw_header.push(text.trim().to_string());
    }
    let mut columns = Vec::with_capacity(raw_header.len());
    let mut seen = HashSet::new();
    for name in &raw_header {
        let key = normalize(name).replace(' ', "_");
        if !key.is_empty() && !seen.insert(key.clone()) {
            return Err(ImportError::DuplicateColumn {
                file,
                column: name.clone(),
            });
        }
        columns.push((role_of(&key), key));
    }
    let phone_columns = columns.iter().filter(|(r, _)| *r == Role::Phone).count();
    if phone_columns != 1 {
        return Err(ImportError::NoPhoneColumn {
            file,
            found: if phone_columns > 1 {
                format!("{phone_columns} phone columns; keep one")
            } else {
                format!("columns: {}", raw_header.join(", "))
            },
        });
    }

    let mut rows = 0u64;
    for record in records {
        let record = record.map_err(|e| csv_error(&file, e))?;
        for (i, field) in record.iter().enumerate() {
            if std::str::from_utf8(field).is_err() {
                return Err(ImportError::NotUtf8 {
                    file,
                    line: record_line(&record),
                    column: raw_header
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", i + 1)),
                });
            }
        }
        rows += 1;
    }
    Ok((
        Layout {
            delimiter,
            raw_header,
            columns,
        },
        rows,
    ))
}

/// Why one row was refused.
fn parse_row(
    layout: &Layout,
    record: &csv::StringRecord,
    default_country: Option<phonenumber::country::Id>,
    file_opt_in: bool,
) -> Result<ContactUpsert, String> {
    if record.len() > layout.columns.len() {
        return Err(format!(
            "has {} columns, the header has {}",
            record.len(),
            layout.columns.len()
        ));
    }
    let mut phone_raw = "";
    let mut contact = ContactUpsert {
        phone: String::new(),
        name: None,
        email: None,
        opt_in: file_opt_in.then_some(true),
        opt_in_source: "import",
        country: None,
        fields: BTreeMap::new(),
    };
    for (i, value) in record.iter().enumerate() {
        let (role, key) = &layout.columns[i];
        if value.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "column {:?} is {} bytes, more than {MAX_FIELD_BYTES}",
                layout.raw_header[i],
                value.len()
            ));
        }
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match role {
            Role::Phone => phone_raw = value,
            Role::Name => contact.name = Some(value.to_string()),
            Role::Email => contact.email = Some(value.to_string()),
            Role::Country => {
                phone::parse_country(value).map_err(|e| e.to_string())?;
                contact.country = Some(value.to_ascii_uppercase());
            }
            Role::OptIn => {
                contact.opt_in = Some(parse_opt_in(value).ok_or_else(|| {
                    format!("opt_in value {value:?} is not yes/no/true/false/1/0")
                })?);
                contact.opt_in_source = "csv";
            }
            Role::Field => {
                if !key.is_empty() {
                    contact.fields.insert(key.clone(), value.to_string());
                }
            }
        }
    }
    if phone_raw.is_empty() {
        return Err("no phone number".to_string());
    }
    let country = match &contact.country {
        Some(c) => Some(phone::parse_country(c).map_err(|e| e.to_string())?),
        None => default_country,
    };
    contact.phone = Phone::parse(phone_raw, country)
        .map_err(|e| e.to_string())?
        .as_str()
        .to_string();
    Ok(contact)
}

fn parse_opt_in(value: &str) -> Option<bool> {
    match normalize(value).as_str() {
        "1" | "y" | "yes" | "true" | "x" | "s" | "sim" | "si" | "opt-in" | "opt_in" | "ok" => {
            Some(true)
        }
        "0" | "n" | "no" | "false" | "nao" | "not" | "opt-out" | "opt_out" => Some(false),
        _ => None,
    }
}

struct Rejects {
    path: Option<PathBuf>,
    writer: Option<csv::Writer<std::fs::File>>,
    count: u64,
    first: Vec<RejectedRow>,
}

impl Rejects {
    fn new(path: Option<PathBuf>) -> Self {
        Rejects {
            path,
            writer: None,
            count: 0,
            first: Vec::new(),
        }
    }

    fn write(
        &mut self,
        file: &str,
        header: &[String],
        line: u64,
        reason: &str,
        record: &csv::StringRecord,
    ) -> Result<(), ImportError> {
        self.count += 1;
        if self.first.len() < MAX_REJECTED_IN_SUMMARY {
            self.first.push(RejectedRow {
                line,
                reason: reason.to_string(),
            });
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e: csv::Error| ImportError::Io {
            file: file.to_string(),
            source: std::io::Error::other(e),
        };
        if self.writer.is_none() {
            let mut w = csv::WriterBuilder::new()
                .flexible(true)
                .from_path(path)
                .map_err(io)?;
            let mut head = vec!["line".to_string(), "reason".to_string()];
            head.extend(header.iter().cloned());
            w.write_record(&head).map_err(io)?;
            self.writer = Some(w);
        }
        if let Some(w) = &mut self.writer {
            let mut row = vec![line.to_string(), reason.to_string()];
            row.extend(record.iter().map(str::to_string));
            w.write_record(&row).map_err(io)?;
        }
        Ok(())
    }

    fn finish(mut self, file: &str) -> Result<Option<PathBuf>, ImportError> {
        match self.writer.take() {
            Some(mut w) => {
                w.flush().map_err(|source| ImportError::Io {
                    file: file.to_string(),
                    source,
                })?;
                Ok(self.path)
            }
            None => {
                // A clean import leaves no stale rejects from an earlier run.
                if let Some(p) = &self.path {
                    let _ = std::fs::remove_file(p);
                }
                Ok(None)
            }
        }
    }
}

/// Imports a CSV into a list. See the module comment for the guarantees.
pub async fn import(
    store: &Store,
    clock: &dyn Clock,
    source: &dyn Source,
    options: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let file = source.name();
    let default_country = match &options.default_country {
        Some(c) => Some(phone::parse_country(c).map_err(|e| ImportError::Option {
            option: "--default-country",
            message: e.to_string(),
        })?),
        None => None,
    };
    if options.list.trim().is_empty() {
        return Err(ImportError::Option {
            option: "--list",
            message: "the list name is empty".into(),
        });
    }
    let (layout, total_rows) = check(source)?;
    let store_err = |source| ImportError::Store {
        file: file.clone(),
        source,
    };
    let now: Millis = clock.now_millis();
    let (list_id, import_id) = store
        .begin_import(&options.list, &file, now)
        .await
        .map_err(store_err)?;

    let progress = if options.progress && std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(total_rows);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let result = load(
        store,
        clock,
        source,
        options,
        &layout,
        default_country,
        list_id,
        import_id,
        &progress,
    )
    .await;
    progress.finish_and_clear();
    let (counts, mut rejects, rows) = match result {
        Ok(r) => r,
        Err(e) => {
            if store.list_size(&options.list).await.unwrap_or(0) == 0 {
                let _ = store.abandon_import(list_id, import_id).await;
            }
            return Err(e);
        }
    };
    if rows == rejects.count && counts == BatchCounts::default() {
        // Nothing valid at all: do not leave an empty list behind.
        store
            .abandon_import(list_id, import_id)
            .await
            .map_err(store_err)?;
    } else {
        store
            .finish_import(import_id, counts, rejects.count, clock.now_millis())
            .await
            .map_err(store_err)?;
    }
    let invalid = rejects.count;
    let rejected = std::mem::take(&mut rejects.first);
    let rejects_path = rejects.finish(&file)?;
    Ok(ImportSummary {
        list: options.list.clone(),
        rows,
        imported: counts.imported,
        updated: counts.updated,
        duplicate: counts.duplicate,
        invalid,
        rejects: rejects_path,
        rejected,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn load(
    store: &Store,
    clock: &dyn Clock,
    source: &dyn Source,
    options: &ImportOptions,
    layout: &Layout,
    default_country: Option<phonenumber::country::Id>,
    list_id: i64,
    import_id: i64,
    progress: &ProgressBar,
) -> Result<(BatchCounts, Rejects, u64), ImportError> {
    let file = source.name();
    let io = |source| ImportError::Io {
        file: file.clone(),
        source,
    };
    let mut csv = csv_reader(
        without_bom(source.open().map_err(io)?).map_err(io)?,
        layout.delimiter,
    );
    let mut rejects = Rejects::new(source.rejects_path());
    let mut counts = BatchCounts::default();
    let mut writer = BatchWriter {
        store: store.clone(),
        file: file.clone(),
        list_id,
        import_id,
        writing: None,
        counts: BatchCounts::default(),
    };
    let mut batch: Vec<ContactUpsert> = Vec::with_capacity(options.batch_size);
    let mut in_batch: HashSet<String> = HashSet::with_capacity(options.batch_size);
    let mut record = csv::StringRecord::new();
    let mut rows = 0u64;
    let mut first = true;
    loop {
        let more = csv
            .read_record(&mut record)
            .map_err(|e| csv_error(&file, e))?;
        if !more {
            break;
        }
        if first {
            first = false; // the header
            continue;
        }
        rows += 1;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|f| f.trim().is_empty()) {
            rejects.write(&file, &layout.raw_header, line, "empty row", &record)?;
            continue;
        }
        match parse_row(layout, &record, default_country, options.opt_in) {
            Err(reason) => rejects.write(&file, &layout.raw_header, line, &reason, &record)?,
            Ok(contact) => {
                if in_batch.insert(contact.phone.clone()) {
                    batch.push(contact);
                } else {
                    counts.duplicate += 1;
                }
            }
        }
        if batch.len() >= options.batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(options.batch_size));
            in_batch.clear();
            writer.write(full, clock.now_millis()).await?;
            progress.set_position(rows);
        }
    }
    writer.write(batch, clock.now_millis()).await?;
    counts += writer.finish().await?;
    progress.set_position(rows);
    Ok((counts, rejects, rows))
}

/// Writes batches of contacts while the next one is parsed: one batch in the database's
/// hands, one being built. Batches commit in file order (each waits for the one before).
struct BatchWriter {
    store: Store,
    file: String,
    list_id: i64,
    import_id: i64,
    writing: Option<tokio::task::JoinHandle<Result<BatchCounts, ImportError>>>,
    counts: BatchCounts,
}

impl BatchWriter {
    /// Waits for the batch before (so at most one is in flight), then starts writing this one.
    async fn write(&mut self, batch: Vec<ContactUpsert>, now: Millis) -> Result<(), ImportError> {
        let written = self.wait().await?;
        self.counts += written;
        if batch.is_empty() {
            return Ok(());
        }
        let (store, file, list_id, import_id) = (
            self.store.clone(),
            self.file.clone(),
            self.list_id,
            self.import_id,
        );
        self.writing = Some(tokio::spawn(async move {
            store
                .import_batch(list_id, import_id, &batch, now)
                .await
                .map_err(|source| ImportError::Store { file, source })
        }));
        Ok(())
    }

    async fn wait(&mut self) -> Result<BatchCounts, ImportError> {
        match self.writing.take() {
            None => Ok(BatchCounts::default()),
            Some(task) => task.await.map_err(|e| ImportError::Store {
                file: self.file.clone(),
                source: StoreError::Batch(format!("import writer failed: {e}")),
            })?,
        }
    }

    /// Waits for the last batch and returns what every batch wrote.
    async fn finish(mut self) -> Result<BatchCounts, ImportError> {
        let written = self.wait().await?;
        self.counts += written;
        Ok(self.counts)
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        // On an error the caller abandons the import: a batch still being written must not
        // land after that, so it is stopped (its transaction rolls back unfinished).
        if let Some(task) = self.writing.take() {
            task.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_delimiters() {
        assert_eq!(sniff_delimiter(b"phone,name"), b',');
        assert_eq!(sniff_delimiter(b"phone;name;\"a,b\""), b';');
        assert_eq!(sniff_delimiter(b"phone\tname"), b'\t');
        assert_eq!(sniff_delimiter(b"phone"), b',');
    }

    #[test]
    fn header_roles() {
        assert_eq!(role_of(&normalize("Teléfono")), Role::Phone);
        assert_eq!(role_of(&normalize("WhatsApp")), Role::Phone);
        assert_eq!(role_of("msisdn"), Role::Phone);
        assert_eq!(role_of("plan"), Role::Field);
    }

    #[test]
    fn opt_in_words() {
        assert_eq!(parse_opt_in("Sí"), Some(true));
        assert_eq!(parse_opt_in("NÃO"), Some(false));
        assert_eq!(parse_opt_in("maybe"), None);
    }

    #[test]
    fn rejects_file_name() {
        assert_eq!(
            rejects_path_for(Path::new("/tmp/x/contacts.csv")),
            PathBuf::from("/tmp/x/contacts.rejects.csv")
        );
    }
}
