"""An SELinux policy whose lookups pin libselinux's rules where they differ from last-match-wins.

tests/unit/test_selabel.py checks cfsboot's labels against EDGE_CASES;
tests/integration/test_selabel_oracle.py checks that libselinux gives the same.
"""

from __future__ import annotations

import stat

CTX = "system_u:object_r:{}:s0"
REG, DIR, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK

EDGE_FILES: dict[str, str] = {
    "file_contexts": "\n".join(
        [
            "# a comment, then an empty line",
            "",
            f"/.*\t\t{CTX.format('default_t')}",
            f"/opt(/.*)?\t{CTX.format('opt_t')}",
            f"/opt/special\t{CTX.format('special_t')}",
            f"/opt/spec.*\t{CTX.format('spec_regex_t')}",
            f"/opt/kinds\t-d\t{CTX.format('kinds_dir_t')}",
            f"/opt/kinds\t{CTX.format('kinds_any_t')}",
            f"/opt/kinds\t-l\t{CTX.format('kinds_link_t')}",
            f"/opt/twice\t{CTX.format('base_literal_t')}",
            f"/srv/a|/tmp/b\t{CTX.format('alt_t')}",
            f"/var/lib(/.*)?\t{CTX.format('var_lib_t')}",
            "/var/lib/none(/.*)?\t<<none>>",
            f"/var/lib/[[:digit:]]+\t--\t{CTX.format('digits_t')}",
            f"   /usr/bin/x\\.y   --   {CTX.format('escaped_literal_t')}   ignored-4th-field",
        ]
    )
    + "\n",
    "file_contexts.homedirs": (
        f"/home/[^/]+(/.*)?\t{CTX.format('user_home_t')}\n"
        f"/opt/local-vs-home(/.*)?\t{CTX.format('from_homedirs_t')}\n"
    ),
    "file_contexts.local": (
        f"/opt/local-vs-home(/.*)?\t{CTX.format('from_local_t')}\n"
        f"/opt/twice\t{CTX.format('local_literal_t')}"  # no final newline
    ),
    "file_contexts.subs": "/aliased /opt\n/aliased/deeper /var/lib\n# /srv /opt\n",
    "file_contexts.subs_dist": "/opt/deeper /var/lib/none\n/root2 /\n",
}
# (path, file type, expected label type or None), as libselinux 3.8 answers.
EDGE_CASES: list[tuple[str, int, str | None]] = [
    ("/", DIR, "default_t"),
    ("/opt", DIR, "opt_t"),
    ("/opt/special", REG, "special_t"),  # a literal beats a newer regex
    ("/opt/specialx", REG, "spec_regex_t"),
    ("/opt/kinds", DIR, "kinds_dir_t"),  # a literal naming the type beats the wildcard
    ("/opt/kinds", LNK, "kinds_link_t"),
    ("/opt/kinds", REG, "kinds_any_t"),
    ("/opt/twice", REG, "base_literal_t"),  # the same literal twice: the oldest
    ("/srv/a", REG, "alt_t"),
    ("/tmp/b", REG, "default_t"),  # the top-level `|` branch is not under the stem /srv
    ("/srv/x/tmp/b", REG, "alt_t"),  # ^/srv/a|/tmp/b$: the second branch is unanchored
    ("/var/lib/x", REG, "var_lib_t"),
    ("/var/lib/none", DIR, None),
    ("/var/lib/none/x", REG, None),
    ("/var/lib/123", REG, "digits_t"),
    ("/var/lib/123", DIR, "var_lib_t"),
    ("/usr/bin/x.y", REG, "escaped_literal_t"),
    ("/usr/bin/x.y", DIR, "default_t"),
    ("/home/u/f", REG, "user_home_t"),
    ("/opt/local-vs-home/f", REG, "from_local_t"),  # .local is newer than .homedirs
    ("/aliased", DIR, "opt_t"),
    ("/aliased/f", REG, "opt_t"),
    ("/aliased/deeper/x", REG, None),  # .subs (first line) then .subs_dist
    ("/root2/opt", DIR, "opt_t"),  # an alias of /
    ("/srv", DIR, "default_t"),
]
