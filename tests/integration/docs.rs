//! The documentation's promises: a short README that links every page of
//! docs/, an architecture page whose files exist, and a Rust recipe that
//! is a doctest.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_readme_is_short_and_links_every_page_of_docs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.lines().count() <= 200,
        "{} lines",
        readme.lines().count()
    );
    for page in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = page.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            assert!(
                readme.contains(&format!("(docs/{name})")),
                "{name} is not linked"
            );
        }
    }
}

#[test]
fn the_files_a_request_passes_through_exist_in_the_order_given() {
    let page = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let flow = &page[..page.find("## Why these pieces").unwrap()];
    let files: Vec<&str> = flow
        .split("**`")
        .skip(1)
        .filter_map(|part| part.split("`**").next())
        .collect();
    assert!(files.len() >= 20, "{files:?}");
    for file in &files {
        assert!(root().join(file).is_file(), "{file} does not exist");
    }
    // From the socket, through the component, back to the connection.
    let at = |file: &str| files.iter().position(|f| *f == file).unwrap();
    assert!(at("host/src/http/listener.rs") < at("host/src/xmlrpc/decode.rs"));
    assert!(at("host/src/xmlrpc/decode.rs") < at("host/src/commit/mod.rs"));
    assert!(at("host/src/commit/mod.rs") < at("guest/src/rules.rs"));
    assert!(at("guest/src/rules.rs") < at("host/src/http/answer.rs"));
}

#[test]
fn the_in_process_rust_recipe_is_the_doctest_that_runs() {
    let page = std::fs::read_to_string(root().join("docs/embedding.md")).unwrap();
    let recipe = crate::support::doc_block(&page, "In Rust, in-process", "rust");
    let source = std::fs::read_to_string(root().join("host/src/locks/mod.rs")).unwrap();
    let doctest = &source[source.find("/// ```standalone_crate\n").unwrap()..];
    let shown: String = doctest
        .lines()
        .skip(1)
        .take_while(|line| *line != "/// ```")
        .filter_map(|line| line.strip_prefix("///"))
        .filter(|line| !line.starts_with(" #"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    assert_eq!(shown, recipe);
}
