//! CSV import: nasty files, precise errors, idempotent re-imports, crash-safe batches.

use crate::both_backends;
use crate::helpers::*;
use tiercast::import::{self, FileSource, ImportError, ImportOptions};

fn options(list: &str) -> ImportOptions {
    ImportOptions {
        list: list.to_string(),
        default_country: Some("BR".into()),
        opt_in: false,
        batch_size: 3,
        progress: false,
    }
}

both_backends!(bom_semicolons_quoted_newlines_bad_and_duplicate_numbers);
async fn bom_semicolons_quoted_newlines_bad_and_duplicate_numbers(db: TestDb) {
    let csv = "\u{feff}Telefone;Nome;plano;notes\n\
               +55 11 98765-4321;Ana;gold;\"line one\nline two\"\n\
               (21) 99876-5432;Bruno;silver;x\n\
               not a number;Carla;gold;x\n\
               5511987654321;Ana Again;platinum;x\n\
               ;Nobody;;\n\
               +55 31 99123-4567;Diego;;\"a;b\"\n\
               123;Short;;\n";
    let path = db.write("nasty.csv", csv);
    let summary = import::import(
        &db.store,
        &db.clock,
        &FileSource(path.clone()),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.rows,
            summary.imported,
            summary.updated,
            summary.duplicate,
            summary.invalid
        ),
        (7, 3, 0, 1, 3)
    );
    assert_eq!(db.store.list_size("l").await.unwrap(), 3);

    // Rejects carry the physical line (the quoted newline makes row 2 span lines 2–3).
    let rejects = std::fs::read_to_string(summary.rejects.as_ref().unwrap()).unwrap();
    let lines: Vec<&str> = rejects.lines().collect();
    assert_eq!(lines[0], "line,reason,Telefone,Nome,plano,notes");
    assert_eq!(
        lines[1],
        r#"5,"not a phone number: ""not a number""",not a number,Carla,gold,x"#
    );
    assert!(lines[2].starts_with("7,no phone number"), "{rejects}");
    assert!(
        lines[3].starts_with(r#"9,"""123"" is not a valid number"#),
        "{rejects}"
    );
    assert!(path.with_file_name("nasty.rejects.csv").exists());

    // Fields: the quoted newline survives, other columns are named fields, the later
    // duplicate in the same file does not overwrite the first.
    let ana = db
        .store
        .contact_by_phone("+5511987654321")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ana.name.as_deref(), Some("Ana"));
    assert_eq!(ana.fields["notes"], "line one\nline two");
    assert_eq!(ana.fields["plano"], "gold");
    assert!(!ana.opt_in);
    let diego = db
        .store
        .contact_by_phone("+5531991234567")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(diego.fields["notes"], "a;b");
    assert!(
        !diego.fields.contains_key("plano"),
        "empty values are not stored"
    );
}

both_backends!(tabs_aliases_opt_in_column_and_flag);
async fn tabs_aliases_opt_in_column_and_flag(db: TestDb) {
    let csv = "WhatsApp\tName\tE-mail\topt_in\tcountry\n\
               11987654321\tAna\tana@example.com\tsim\t\n\
               7400 123456\tBob\t\tno\tGB\n\
               21998765432\tCid\t\tmaybe\t\n";
    let path = db.write("tabs.csv", csv);
    let mut opts = options("l");
    opts.opt_in = true;
    let s = import::import(&db.store, &db.clock, &FileSource(path), &opts)
        .await
        .unwrap();
    assert_eq!((s.imported, s.invalid), (2, 1));
    let ana = db
        .store
        .contact_by_phone("+5511987654321")
        .await
        .unwrap()
        .unwrap();
    assert!(ana.opt_in);
    assert_eq!(ana.email.as_deref(), Some("ana@example.com"));
    let bob = db
        .store
        .contact_by_phone("+447400123456")
        .await
        .unwrap()
        .unwrap();
    assert!(!bob.opt_in, "the column wins over --opt-in");
    assert_eq!(bob.country.as_deref(), Some("GB"));
}

both_backends!(missing_phone_column_is_an_error_and_writes_nothing);
async fn missing_phone_column_is_an_error_and_writes_nothing(db: TestDb) {
    let path = db.write("nophone.csv", "name,email\nAna,a@x.com\n");
    let err = import::import(&db.store, &db.clock, &FileSource(path), &options("l"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::NoPhoneColumn { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("line 1: no phone column in the header (columns: name, email)"),
        "{err}"
    );
    assert!(!db.store.list_exists("l").await.unwrap());
    assert_eq!(db.store.contact_count().await.unwrap(), 0);
}

both_backends!(non_utf8_bytes_name_line_and_column_and_write_nothing);
async fn non_utf8_bytes_name_line_and_column_and_write_nothing(db: TestDb) {
    let mut bytes =
        b"phone,name\n+5511987654321,Ana\n+5511987654322,Bia\n+5511987654323,Jos".to_vec();
    bytes.extend_from_slice(&[0xE9]); // Latin-1 'é'
    bytes.extend_from_slice(b"\n");
    let path = db.write("latin1.csv", bytes);
    let mut opts = options("l");
    opts.batch_size = 1; // even with tiny batches nothing may be written
    let err = import::import(&db.store, &db.clock, &FileSource(path), &opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string().split(": ").skip(1).collect::<Vec<_>>().join(": "),
        "line 4, column \"name\": bytes that are not UTF-8 (save the file as UTF-8 and import again); nothing was imported"
    );
    assert!(!db.store.list_exists("l").await.unwrap());
    assert_eq!(db.store.contact_count().await.unwrap(), 0);
}

both_backends!(empty_file_and_header_only);
async fn empty_file_and_header_only(db: TestDb) {
    let err = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("e.csv", "")),
        &options("l"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImportError::Empty { .. }));
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("h.csv", "phone\n")),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!(s.rows, 0);
}

both_backends!(huge_fields_and_ragged_rows_are_rejected_rows);
async fn huge_fields_and_ragged_rows_are_rejected_rows(db: TestDb) {
    let huge = "x".repeat(tiercast::import::MAX_FIELD_BYTES + 1);
    let csv = format!(
        "phone,note\n+5511987654321,{huge}\n+5511987654322,ok,extra\n+5511987654323,fine\n"
    );
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("h.csv", csv)),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!((s.imported, s.invalid), (1, 2));
    let rejects = std::fs::read_to_string(s.rejects.unwrap()).unwrap();
    assert!(
        rejects.contains("2,\"column \"\"note\"\" is 65537 bytes"),
        "{}",
        &rejects[..200]
    );
    assert!(
        rejects.contains("3,\"has 3 columns, the header has 2\""),
        "{}",
        &rejects[..100]
    );
}

both_backends!(oversized_headers_and_rows_are_refused_by_line_and_write_nothing);
/// Rows and headers past the column and size limits stop the import before the parser holds
/// them, naming the line; quoting is followed the way the parser follows it, so delimiters
/// inside quotes and a stray quote mid-field count as they should.
async fn oversized_headers_and_rows_are_refused_by_line_and_write_nothing(db: TestDb) {
    use tiercast::import::{MAX_COLUMNS, MAX_HEADER_BYTES, MAX_ROW_BYTES};
    let refused = |name: &str, csv: String| {
        let path = db.write(name, csv);
        let store = db.store.clone();
        let clock = db.clock.clone();
        async move {
            import::import(&store, &clock, &FileSource(path), &options("l"))
                .await
                .unwrap_err()
        }
    };
    let wide_header = format!("phone{}\n+5511987654321\n", ",c".repeat(MAX_COLUMNS));
    let e = refused("wide-header.csv", wide_header).await;
    assert!(matches!(e, ImportError::TooLarge { line: 1, .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with("line 1: the header has more than 1000 columns; nothing was imported"),
        "{e}"
    );
    let long_header = format!("phone,{}\n+5511987654321,x\n", "h".repeat(MAX_HEADER_BYTES));
    let e = refused("long-header.csv", long_header).await;
    assert!(
        e.to_string()
            .contains("line 1: the header is longer than 65536 bytes"),
        "{e}"
    );
    // A row of commas, as the report had (far more than the limit; a few MiB here).
    let commas = format!(
        "phone,name\n+5511987654321,Ana\n+5511987654322,{}\n",
        ",".repeat(4 * 1024 * 1024)
    );
    let e = refused("commas.csv", commas).await;
    assert!(
        e.to_string()
            .contains("line 3: the row has more than 1000 columns"),
        "{e}"
    );
    let long_row = format!(
        "phone,note\n+5511987654321,\"{}\"\n",
        "x\n".repeat(MAX_ROW_BYTES / 2 + 1)
    );
    let e = refused("long-row.csv", long_row).await;
    assert!(
        e.to_string()
            .contains("line 2: the row is longer than 1048576 bytes"),
        "{e}"
    );
    assert!(!db.store.list_exists("l").await.unwrap());
    assert_eq!(db.store.contact_count().await.unwrap(), 0);

    // Delimiters inside quotes are no columns; a quote mid-field is a character, and does not
    // make the rest of the file one quoted record.
    let mut csv = format!(
        "phone,note\n+5511987654321,\"{}\"\n+5511987654322,5\" screen\n",
        ",".repeat(2 * MAX_COLUMNS)
    );
    // Past the stray quote, more than a row's limit in a few rows.
    let rows = MAX_ROW_BYTES / (60 * 1024) + 2;
    for i in 0..rows {
        csv.push_str(&format!(
            "+55119{:08},{}\n",
            70_000_000 + i,
            "y".repeat(60 * 1024)
        ));
    }
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("quoted.csv", csv)),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!((s.invalid, s.imported), (0, 2 + rows as u64));
}

both_backends!(reimport_updates_instead_of_duplicating);
async fn reimport_updates_instead_of_duplicating(db: TestDb) {
    let first = db.write(
        "a.csv",
        "phone,name,plan,city\n+5511987654321,Ana,gold,SP\n+5511987654322,Bia,silver,RJ\n",
    );
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(first.clone()),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!((s.imported, s.updated), (2, 0));
    let second = db.write(
        "b.csv",
        "phone,plan\n+5511987654321,platinum\n+5511987654399,bronze\n",
    );
    let s = import::import(&db.store, &db.clock, &FileSource(second), &options("l"))
        .await
        .unwrap();
    assert_eq!((s.imported, s.updated, s.duplicate), (1, 1, 0));
    assert_eq!(db.store.list_size("l").await.unwrap(), 3);
    assert_eq!(db.store.contact_count().await.unwrap(), 3);
    let ana = db
        .store
        .contact_by_phone("+5511987654321")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ana.name.as_deref(),
        Some("Ana"),
        "a file without a name column keeps the name"
    );
    assert_eq!(ana.fields["plan"], "platinum");
    assert_eq!(
        ana.fields["city"], "SP",
        "fields other files brought are kept"
    );

    // The same contacts on another list: new memberships, no new contacts.
    let s = import::import(&db.store, &db.clock, &FileSource(first), &options("other"))
        .await
        .unwrap();
    assert_eq!((s.imported, s.updated), (2, 0));
    assert_eq!(db.store.contact_count().await.unwrap(), 3);
}

both_backends!(a_rerun_after_a_crash_completes_without_duplicates);
async fn a_rerun_after_a_crash_completes_without_duplicates(db: TestDb) {
    let rows: Vec<String> = (0..10)
        .map(|i| format!("+55119876543{i:02},P{i}"))
        .collect();
    // The crashed run got through the first batches only: what it committed is whole rows.
    let partial = format!("phone,name\n{}\n", rows[..6].join("\n"));
    import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("p.csv", partial)),
        &options("l"),
    )
    .await
    .unwrap();
    let full = format!("phone,name\n{}\n", rows.join("\n"));
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("f.csv", full)),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!((s.imported, s.updated, s.duplicate), (4, 6, 0));
    assert_eq!(db.store.list_size("l").await.unwrap(), 10);
    assert_eq!(db.store.contact_count().await.unwrap(), 10);
}

both_backends!(duplicates_across_batches_of_one_file_are_counted);
async fn duplicates_across_batches_of_one_file_are_counted(db: TestDb) {
    let csv =
        "phone\n+5511987654321\n+5511987654322\n+5511987654323\n+5511987654324\n011 98765-4321\n";
    let s = import::import(
        &db.store,
        &db.clock,
        &FileSource(db.write("d.csv", csv)),
        &options("l"),
    )
    .await
    .unwrap();
    assert_eq!((s.imported, s.duplicate), (4, 1));
}

/// Memory stays flat in the file size: the peak RSS of importing 200,000 rows is close to
/// that of 20,000 rows (measured on the real binary through getrusage of its children).
#[tokio::test(flavor = "multi_thread")]
async fn import_memory_is_flat_in_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, n: usize| {
        let path = dir.path().join(name);
        let mut s = String::with_capacity(n * 40);
        s.push_str("phone,name,plan\n");
        for i in 0..n {
            s.push_str(&format!(
                "+55119{:08},Person {i},plan{}\n",
                60_000_000 + i,
                i % 7
            ));
        }
        std::fs::write(&path, s).unwrap();
        path
    };
    let small = write("small.csv", 20_000);
    let big = write("big.csv", 200_000);
    let run = |file: &std::path::Path, db: &str| {
        let status = std::process::Command::new(binary())
            .args([
                "import",
                file.to_str().unwrap(),
                "--list",
                "l",
                "--database-url",
            ])
            .arg(format!("sqlite://{}", dir.path().join(db).display()))
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        children_peak_rss_kb()
    };
    let small_peak = run(&small, "s.db");
    let big_peak = run(&big, "b.db");
    assert!(
        big_peak < small_peak + 24 * 1024,
        "peak RSS grew from {small_peak} KiB (20k rows) to {big_peak} KiB (200k rows)"
    );
}

fn children_peak_rss_kb() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    }
}
