//! Labelled training data for `train-head`: folders per class or TSV/CSV rows, and the
//! clear errors for data a head cannot be trained on.

use std::fs;

use embslim::corpus::load_labelled;

fn write(path: &std::path::Path, text: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn folders_per_class_with_a_latin1_file() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("tech/a.txt"), b"chips");
    write(&tmp.path().join("tech/b.txt"), b"caf\xe9 wifi"); // Latin-1
    write(&tmp.path().join("sport/c.txt"), b"goal");
    let d = load_labelled(tmp.path()).unwrap();
    assert_eq!(d.labels, ["sport", "tech"]);
    assert_eq!(d.classes, [0, 1, 1]);
    assert_eq!(d.lossy.len(), 1);
    assert!(d.lossy[0].ends_with("tech/b.txt"));
    assert!(d.texts[2].contains("caf\u{fffd} wifi"));
}

#[test]
fn tsv_and_csv_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("d.tsv");
    write(&tsv, b"pos\tgreat film, loved it\nneg\tdull\n\npos\tfine\n");
    let d = load_labelled(&tsv).unwrap();
    assert_eq!((d.labels.len(), d.texts.len()), (2, 3));
    assert_eq!(d.texts[0], "great film, loved it");
    let csv = tmp.path().join("d.csv");
    write(&csv, b"pos,great film, loved it\nneg,dull\n");
    let d = load_labelled(&csv).unwrap();
    assert_eq!(d.texts[0], "great film, loved it");
}

fn err(path: &std::path::Path) -> String {
    load_labelled(path).unwrap_err().to_string()
}

#[test]
fn bad_labelled_data_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // one class only
    let one = tmp.path().join("one");
    write(&one.join("tech/a.txt"), b"x");
    let e = err(&one);
    assert!(e.contains("1 class(es)") && e.contains("at least two"), "{e}");
    // an empty class folder
    let empty = tmp.path().join("empty");
    write(&empty.join("tech/a.txt"), b"x");
    write(&empty.join("sport/a.txt"), b"y");
    fs::create_dir_all(empty.join("politics")).unwrap();
    let e = err(&empty);
    assert!(e.contains("politics") && e.contains("has no .txt files"), "{e}");
    // a document outside any class folder
    let loose = tmp.path().join("loose");
    write(&loose.join("tech/a.txt"), b"x");
    write(&loose.join("stray.txt"), b"y");
    let e = err(&loose);
    assert!(e.contains("stray.txt") && e.contains("not inside a class folder"), "{e}");
    // a TSV row without a label, and one with an empty label
    let tsv = tmp.path().join("bad.tsv");
    write(&tsv, b"pos\tgood\nno label here\n");
    let e = err(&tsv);
    assert!(e.contains("bad.tsv") && e.contains("line 2") && e.contains("label<TAB>text"), "{e}");
    write(&tsv, b"pos\tgood\n\tno label\n");
    assert!(err(&tsv).contains("line 2: the label is empty"));
    // unreadable: a path that does not exist
    let e = err(&tmp.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("No such file"), "{e}");
}

/// One loaded bundle is shared by the threads of a server.
#[test]
fn bundle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<embslim::Bundle>();
}
