"""Code rows must parse, and their own tests must pass against their reference solution in the sandbox."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.sandbox import SandboxLimits, run_python

OUTPUT_KEPT = 2000  # characters of a failing run's output kept on the rejected row


class CodeParseFilter(BaseFilter):
    """The structured answer was parsed at generation; a row whose parts are missing or do not parse goes."""

    name = "🧩 code parses"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("kind") != "code":
            return True
        return (False, "code_unparsed") if doc.metadata.get("code_parse_error") else True


class CodeTestsFilter(BaseFilter):
    """Runs solution + tests in the sandbox, several at a time (each run is its own process)."""

    name = "🧪 code tests"

    def __init__(self, limits: SandboxLimits, parallel: int = 2, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer, batch_size=max(1, parallel) * 4)
        self.limits = limits
        self.parallel = max(1, parallel)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        code_docs = [d for d in batch if d.metadata.get("kind") == "code"]
        with ThreadPoolExecutor(self.parallel) as pool:
            results = dict(
                zip(
                    (id(d) for d in code_docs),
                    pool.map(lambda d: run_python(self._program(d), self.limits), code_docs),
                    strict=True,
                )
            )
        out: list[bool | tuple[bool, str]] = []
        for doc in batch:
            result = results.get(id(doc))
            if result is None:
                out.append(True)
                continue
            doc.metadata["tests_passed"] = result.passed
            doc.metadata["test_runtime_s"] = result.runtime_s
            if result.passed:
                out.append(True)
            else:
                doc.metadata["test_output"] = result.output[-OUTPUT_KEPT:]
                out.append((False, "code_tests_timeout" if result.reason == "timeout" else "code_tests_failed"))
        return out

    @staticmethod
    def _program(doc: Document) -> str:
        return f"{doc.metadata['code_solution']}\n\n\n{doc.metadata['code_tests']}\n"
