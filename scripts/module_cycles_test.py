#!/usr/bin/env python3
"""Tests of scripts/module-cycles.py on small made-up crates (run by make lint):
    python3 scripts/module_cycles_test.py
"""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "module-cycles.py")


def run(files):
    """Writes files ({path: text}) into a fresh src/ and runs the checker."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        for rel, text in files.items():
            path = os.path.join(src, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        done = subprocess.run([sys.executable, SCRIPT, src], capture_output=True, text=True)
        return done.returncode, done.stdout


LIB = "pub mod a;\npub mod b;\npub mod c;\n"


class ModuleCycles(unittest.TestCase):
    def assertCycle(self, files, *modules):
        rc, out = run(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("cycle: " + ", ".join(modules), out)

    def assertNoCycle(self, files):
        rc, out = run(files)
        self.assertEqual(rc, 0, out)
        self.assertIn("0 cycles", out)

    def test_a_chain_is_no_cycle(self):
        self.assertNoCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\npub struct A(B);\n",
            "b.rs": "use crate::c::C;\npub struct B(C);\n",
            "c.rs": "pub struct C;\n",
        })

    def test_two_modules_naming_each_other(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "pub struct B;\npub fn f() -> crate::a::A { crate::a::A }\n",
            "c.rs": "",
        }, "a", "b")

    def test_a_cycle_through_three_modules_and_folders(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a/mod.rs": "mod inner;\n",
            "a/inner.rs": "use crate::b::B;\n",
            "b.rs": "pub struct B;\nuse crate::c;\n",
            "c/mod.rs": "pub fn f() { crate::a::g() }\n",
        }, "a", "b", "c")

    def test_use_groups_nested(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::{\n    c::{X, Y},\n    b,\n};\n",
            "b.rs": "use crate::a;\n",
            "c.rs": "pub struct X;\npub struct Y;\n",
        }, "a", "b")

    def test_super_paths_that_climb_out_of_a_module(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a/mod.rs": "pub mod deep;\n",
            "a/deep.rs": "use super::super::b::B;\nuse super::Local;\n",
            "b.rs": "pub struct B;\nuse super::a;\n",
            "c.rs": "",
        }, "a", "b")

    def test_super_inside_an_inline_module_stays_in_its_file(self):
        self.assertNoCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\nmod inner {\n    use super::b;\n}\n",
            "b.rs": "pub struct B;\nmod inner { use super::B; }\n",
            "c.rs": "",
        })

    def test_comments_strings_and_char_literals_are_not_code(self):
        self.assertNoCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\n",
            "b.rs": (
                "// use crate::a;\n"
                "/* crate::a:: /* nested */ crate::a::x */\n"
                "/// [`crate::a::A`]\n"
                "const Q: char = '\"';\n"
                "const S: &str = \"crate::a::A \\\" crate::a\";\n"
                "const R: &str = r#\"crate::a::A\"#;\n"
                "fn f<'x>(s: &'x str) -> &'x str { s }\n"
                "pub struct B;\n"
            ),
            "c.rs": "",
        })

    def test_code_after_a_string_with_a_quote_char_is_still_read(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\n",
            "b.rs": "const Q: char = '\"';\nuse crate::a;\npub struct B;\n",
            "c.rs": "",
        }, "a", "b")

    def test_test_modules_inline_and_in_their_own_files_are_left_out(self):
        self.assertNoCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\n#[cfg(test)]\nmod tests;\n#[cfg(all(test, unix))]\nmod more;\n",
            "a/tests.rs": "use crate::a;\nuse crate::b;\n",
            "a/more/mod.rs": "mod deeper;\n",
            "a/more/deeper.rs": "use crate::b;\n",
            "b.rs": (
                "pub struct B;\n"
                "#[cfg(test)]\n#[allow(unused)]\nmod tests {\n    use crate::a;\n    fn t() { let _ = crate::a::x(); }\n}\n"
                "#[cfg(test)]\nuse crate::a::Thing;\n"
            ),
            "c.rs": "",
        })

    def test_code_after_a_test_module_is_still_read(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a.rs": "use crate::b::B;\n",
            "b.rs": "#[cfg(test)]\nmod tests { use crate::c; }\npub fn f() { crate::a::g() }\n",
            "c.rs": "",
        }, "a", "b")

    def test_dollar_crate_in_macros_counts(self):
        self.assertCycle({
            "lib.rs": LIB,
            "a.rs": "macro_rules! m { () => { $crate::b::f() } }\n",
            "b.rs": "use crate::a;\n",
            "c.rs": "",
        }, "a", "b")

    def test_root_items_and_crate_roots_are_not_modules(self):
        self.assertNoCycle({
            "lib.rs": LIB + "pub fn helper() {}\nuse crate::a::A;\nuse crate::b::B;\n",
            "main.rs": "use crate::a;\n",
            "a.rs": "pub fn f() { crate::helper() }\nuse crate::b::B;\n",
            "b.rs": "pub struct B;\nuse crate::helper;\n",
            "c.rs": "",
        })

    def test_usage_errors(self):
        done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
        self.assertEqual(done.returncode, 2)
        done = subprocess.run([sys.executable, SCRIPT, "/nonexistent/src"], capture_output=True, text=True)
        self.assertEqual(done.returncode, 2)

    def test_several_folders_fail_if_one_has_a_cycle(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, b in (("clean", "pub struct B;\n"), ("cyclic", "use crate::a;\n")):
                os.makedirs(os.path.join(tmp, name))
                for rel, text in (("lib.rs", LIB), ("a.rs", "use crate::b;\n"), ("b.rs", b)):
                    with open(os.path.join(tmp, name, rel), "w") as f:
                        f.write(text)
            clean, cyclic = os.path.join(tmp, "clean"), os.path.join(tmp, "cyclic")
            self.assertEqual(subprocess.run([sys.executable, SCRIPT, clean], capture_output=True).returncode, 0)
            self.assertEqual(subprocess.run([sys.executable, SCRIPT, cyclic, clean], capture_output=True).returncode, 1)
            self.assertEqual(subprocess.run([sys.executable, SCRIPT, clean, cyclic], capture_output=True).returncode, 1)


if __name__ == "__main__":
    unittest.main()
