"""The store's schema, as the forward migrations that build it: a new database runs them all, an older one
the rest. The schema version is how many there are."""

from __future__ import annotations

import sqlite3

# Forward migrations: MIGRATIONS[i] takes a database from schema version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        spec TEXT NOT NULL,
        provenance TEXT NOT NULL DEFAULT '{}',
        n_pairs INTEGER NOT NULL DEFAULT 0,
        n_sites INTEGER NOT NULL DEFAULT 0,
        started TEXT NOT NULL,
        finished TEXT,
        compute_s REAL NOT NULL DEFAULT 0,
        error TEXT,
        pid INTEGER
    );
    CREATE TABLE pairs (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        pair INTEGER NOT NULL,
        pair_id TEXT, category TEXT, treatment TEXT, control TEXT, target TEXT,
        treatment_tokens TEXT, control_tokens TEXT,
        m_treatment REAL, m_control REAL, te REAL,
        PRIMARY KEY (run_id, pair)
    );
    CREATE TABLE effects (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        pair INTEGER NOT NULL,
        module TEXT NOT NULL,
        layer INTEGER NOT NULL,
        position INTEGER NOT NULL,   -- -1: every position at once ('*')
        neuron INTEGER NOT NULL,     -- -1 for resid/attn/mlp, else the first unit of a neuron site
        method TEXT NOT NULL,
        width INTEGER NOT NULL DEFAULT 1,
        token TEXT,
        ie REAL NOT NULL,
        PRIMARY KEY (run_id, pair, module, layer, position, neuron, method)
    ) WITHOUT ROWID;
    CREATE INDEX effects_by_strength ON effects (run_id, module, layer, position, abs(ie) DESC);
    """,
    # atp runs verified by exact patching: Spearman rank agreement of the two on the verified sites
    "ALTER TABLE pairs ADD COLUMN atp_spearman REAL;",
    # gate checks of a run's top neurons on held-out pairs, and their per-pair, per-arm rows
    """
    CREATE TABLE gate_checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        created TEXT NOT NULL,
        spec TEXT NOT NULL,          -- GateSpec as JSON, plus the held-out pairs source
        neurons TEXT NOT NULL,       -- JSON list of [layer, unit], strongest first
        summary TEXT NOT NULL
    );
    CREATE TABLE gate_rows (
        check_id INTEGER NOT NULL REFERENCES gate_checks(id) ON DELETE CASCADE,
        pair INTEGER NOT NULL,
        pair_id TEXT,
        arm TEXT NOT NULL,           -- top | random
        seed INTEGER NOT NULL,       -- -1 for top
        m_before REAL NOT NULL, m_after REAL NOT NULL, shift REAL NOT NULL, te REAL NOT NULL,
        text_before TEXT, text_after TEXT,
        PRIMARY KEY (check_id, pair, arm, seed)
    ) WITHOUT ROWID;
    """,
    # indexes shaped like the explorer's queries (bench/store_scale.py): covering ones for the per-layer
    # grids and neuron lists averaged over pairs, and |IE| order within a pair
    """
    DROP INDEX effects_by_strength;
    CREATE INDEX effects_by_site ON effects (run_id, method, module, layer, position, neuron, ie);
    CREATE INDEX effects_by_strength ON effects (run_id, method, module, pair, abs(ie) DESC);
    ALTER TABLE runs ADD COLUMN n_rows INTEGER NOT NULL DEFAULT 0;  -- counted when a run stops running
    UPDATE runs SET n_rows = (SELECT COUNT(*) FROM effects e WHERE e.run_id = runs.id);
    """,
    # each pair's behaviour: the greedy answers to its two prompts, and whether the judge called them refusals
    """
    ALTER TABLE pairs ADD COLUMN answer_treatment TEXT;
    ALTER TABLE pairs ADD COLUMN answer_control TEXT;
    ALTER TABLE pairs ADD COLUMN refused_treatment INTEGER;
    ALTER TABLE pairs ADD COLUMN refused_control INTEGER;
    """,
    # gate checks become curves: rows per layer group and K, judged answers; the curve is computed from the
    # rows (analysis.gate_curve), so the stored summary goes. A check before this ran one K, over all
    # layers, ranked by |IE|. (Tables rebuilt, not altered: foreign keys are off while migrating.)
    """
    CREATE TABLE gate_checks_v6 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        created TEXT NOT NULL,
        spec TEXT NOT NULL,          -- GateSpec as JSON, plus the held-out pairs source
        neurons TEXT NOT NULL        -- JSON {layer group: [[layer, unit], ...] strongest first}
    );
    INSERT INTO gate_checks_v6
        SELECT id, run_id, created,
               json_set(spec, '$.tops', json_array(json_extract(spec, '$.top')), '$.sign', 'abs',
                        '$.groups', json_array('all')),
               json_object('all', json(neurons))
        FROM gate_checks;
    CREATE TABLE gate_rows_v6 (
        check_id INTEGER NOT NULL REFERENCES gate_checks(id) ON DELETE CASCADE,
        pair INTEGER NOT NULL,
        pair_id TEXT,
        grp TEXT NOT NULL,           -- layer group: final | last-quarter | all
        k INTEGER NOT NULL,          -- neurons asked for; `units` ablated (fewer when the run ranked fewer)
        units INTEGER NOT NULL,
        arm TEXT NOT NULL,           -- top | random
        seed INTEGER NOT NULL,       -- -1 for top
        m_before REAL NOT NULL, m_after REAL NOT NULL, shift REAL NOT NULL, te REAL NOT NULL,
        refused_before INTEGER, refused_after INTEGER,
        text_before TEXT, text_after TEXT,
        PRIMARY KEY (check_id, grp, k, pair, seed)
    ) WITHOUT ROWID;
    INSERT INTO gate_rows_v6
        SELECT r.check_id, r.pair, r.pair_id, 'all', json_extract(c.spec, '$.top'),
               json_array_length(c.neurons), r.arm, r.seed, r.m_before, r.m_after, r.shift, r.te,
               NULL, NULL, r.text_before, r.text_after
        FROM gate_rows r JOIN gate_checks c ON c.id = r.check_id;
    DROP TABLE gate_rows;
    DROP TABLE gate_checks;
    ALTER TABLE gate_checks_v6 RENAME TO gate_checks;
    ALTER TABLE gate_rows_v6 RENAME TO gate_rows;
    """,
    # --verify-generation: each pair's top sites patched into the control prompt, its answer judged
    """
    CREATE TABLE generations (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        pair INTEGER NOT NULL,
        layer INTEGER NOT NULL, module TEXT NOT NULL, position INTEGER NOT NULL, neuron INTEGER NOT NULL,
        method TEXT NOT NULL,        -- the method of the IE the site was chosen by
        ie REAL NOT NULL,
        answer TEXT NOT NULL,
        refused INTEGER NOT NULL,    -- the judge's verdict on the patched answer
        flips INTEGER NOT NULL,      -- it differs from the unpatched control answer's
        PRIMARY KEY (run_id, pair, layer, module, position, neuron)
    ) WITHOUT ROWID;
    """,
    # each finished run's neuron sites averaged over its pairs (positions from the end): the explorer's
    # neuron panes and the gate ranking read them at once instead of aggregating 10^6 rows per look
    """
    CREATE TABLE neuron_summary (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        method TEXT NOT NULL,
        layer INTEGER NOT NULL,
        pos INTEGER,                 -- from the end (-1 the last token); NULL for every position at once
        neuron INTEGER NOT NULL,
        width INTEGER NOT NULL,
        mean_ie REAL NOT NULL,
        n INTEGER NOT NULL
    );
    CREATE INDEX neuron_summary_by_strength ON neuron_summary (run_id, method, abs(mean_ie) DESC);
    CREATE INDEX neuron_summary_by_layer ON neuron_summary (run_id, method, layer, abs(mean_ie) DESC);
    CREATE INDEX neuron_summary_by_site ON neuron_summary (run_id, method, layer, neuron, pos);
    ALTER TABLE runs ADD COLUMN summarised INTEGER NOT NULL DEFAULT 0;  -- its neuron_summary is complete
    UPDATE runs SET summarised = 1 WHERE status != 'running';
    INSERT INTO neuron_summary
        SELECT e.run_id, e.method, e.layer,
               CASE WHEN e.position < 0 THEN NULL
                    ELSE e.position - json_array_length(p.control_tokens) END AS pos,
               e.neuron, MAX(e.width), AVG(e.ie), COUNT(*)
        FROM effects e JOIN pairs p ON p.run_id = e.run_id AND p.pair = e.pair
        JOIN runs r ON r.id = e.run_id AND r.status != 'running'
        WHERE e.module = 'neuron' GROUP BY e.run_id, e.method, e.layer, pos, e.neuron;
    """,
    # one writer per run: the host of the process that holds the run (with `pid`) and when it last said so
    """
    ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN heartbeat REAL;  -- unix time, renewed by the writer every LEASE_RENEW_S
    """,
    # studies (analysis.study): the runs and the gate check that answer the four claims on one model and source
    """
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        spec TEXT NOT NULL,          -- StudySpec as JSON
        status TEXT NOT NULL,        -- running | done | failed | interrupted (resumable unless done)
        error TEXT,
        pid INTEGER,
        host TEXT,
        modules_run INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        neurons_run INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        gate_check INTEGER REFERENCES gate_checks(id) ON DELETE SET NULL,
        stage_s TEXT NOT NULL DEFAULT '{}'  -- JSON {stage: wall seconds}, summed over resumes
    );
    -- a neuron's IE/TE over pairs is sum IE / sum TE: the summary keeps the TE summed over its rows' pairs
    -- (summaries written before have none: those runs are summarised again when next read)
    ALTER TABLE neuron_summary ADD COLUMN te_sum REAL;
    UPDATE runs SET summarised = 0;
    """,
    # jobs in progress (db.jobs), as every process that opens the database sees them: a run from before its
    # row exists (loading the model), its stage and countable progress, and a cancel any process may ask for
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,              -- run | resume | gate | study
        model TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,  -- once the run exists
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        heartbeat REAL NOT NULL,         -- unix time, renewed every LEASE_RENEW_S
        stage TEXT NOT NULL,             -- what it does now: loading the model, judging answers, patching ...
        done INTEGER,                    -- the stage's countable progress: done of total (NULL: uncountable)
        total INTEGER,
        first_done INTEGER,              -- done at the stage's first report (a resume starts part-way)
        stage_started REAL NOT NULL,     -- unix time: the elapsed time and the ETA
        cancel INTEGER NOT NULL DEFAULT 0  -- asked by any process (c in the explorer), polled between batches
    );
    """,
    # direct effects (--effects ie,de) beside each site's IE, and their mean in the neuron summary; NULL where
    # a run did not ask for them
    """
    ALTER TABLE effects ADD COLUMN de REAL;
    ALTER TABLE neuron_summary ADD COLUMN mean_de REAL;
    """,
    # the run's refusal direction per layer (analysis.direction): what its `direction` sites patched along and
    # its gate curves ablate, from its own pairs
    """
    CREATE TABLE directions (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        layer INTEGER NOT NULL,
        unit BLOB NOT NULL,          -- d_model float32, little-endian: the unit vector
        norm REAL NOT NULL,          -- the norm of the mean difference it normalises
        pairs INTEGER NOT NULL,      -- the run's pairs it was taken over
        PRIMARY KEY (run_id, layer)
    ) WITHOUT ROWID;
    """,
    # trust: a writer is the process at pid on host *writing this file* (a copy of the database taken while it
    # lived is not written by it); who asked a job to stop; a study's held-out pairs as it started (a resume
    # never reads them from the files again) and the fingerprints of the files it read
    """
    ALTER TABLE runs ADD COLUMN db_file TEXT;
    ALTER TABLE studies ADD COLUMN db_file TEXT;
    ALTER TABLE jobs ADD COLUMN db_file TEXT;
    ALTER TABLE jobs ADD COLUMN cancelled_by TEXT;
    ALTER TABLE studies ADD COLUMN held_out TEXT;  -- JSON list of pairs, tokens included
    ALTER TABLE studies ADD COLUMN inputs TEXT;    -- JSON {field: {path, sha256}} (analysis.inputs.record)
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str):
    """The SQL statements of a script, one at a time (they run inside one explicit transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
