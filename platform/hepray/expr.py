"""Cut, target and observer expressions on branches: `ele_pt > 20 and abs(ele_eta) < 2.4`.

A small, safe subset of Python evaluated column-wise with numpy: names are branches,
`and`/`or`/`not` act element-wise, chained comparisons work, and only the functions in
FUNCTIONS may be called. Nothing else (attributes, subscripts, lambdas) is accepted.
A branch whose name is not a Python name (Delphes' `Jet.PT`, `nJet.size`) is written in
backquotes: `` `Jet.PT` > 20 ``; a name not called is always a branch, even `log`.
Powers stay cheap: a constant exponent is at most MAX_EXPONENT in size and a power of constants
may not contain another one (`9 ** 9 ** 9` would compute a huge integer inside a read task).
"""

from __future__ import annotations

import ast
import operator
import re
from functools import reduce
from typing import Any

import numpy as np

FUNCTIONS = {
    name: getattr(np, name)
    for name in (
        "abs",
        "sqrt",
        "log",
        "log10",
        "exp",
        "sin",
        "cos",
        "tan",
        "arctan2",
        "sinh",
        "cosh",
        "tanh",
        "minimum",
        "maximum",
        "where",
        "hypot",
    )
}
BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}
COMPARE = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
MAX_EXPONENT = 64  # largest constant exponent, in absolute value
QUOTED = re.compile(r"`([^`]+)`")


class ExpressionError(ValueError):
    pass


class Expression:
    """A parsed expression; `branches` are the names it reads, `evaluate` computes it."""

    def __init__(self, text: str):
        self.text = text
        self._quoted: dict[str, str] = {}  # placeholder identifier -> the backquoted branch name
        try:
            self._tree = ast.parse(QUOTED.sub(self._placeholder, text.strip()), mode="eval").body
        except (SyntaxError, ValueError) as error:  # ValueError: null bytes, integers of over 4300 digits
            raise ExpressionError(f"'{text}': not a valid expression ({getattr(error, 'msg', error)})") from None
        self.branches: set[str] = set()
        self._check(self._tree)

    def _placeholder(self, match: re.Match) -> str:
        identifier = f"__branch{len(self._quoted)}__"
        self._quoted[identifier] = match.group(1)
        return identifier

    def _branch(self, identifier: str) -> str:
        return self._quoted.get(identifier, identifier)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):  # a called name is checked as a Call, never reaches here
            self.branches.add(self._branch(node.id))
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, bool)):
                raise ExpressionError(f"'{self.text}': only numeric constants are allowed")
        elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            self._check(node.left)
            self._check(node.right)
            if isinstance(node.op, ast.Pow):
                self._check_power(node)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)):
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.Compare) and all(type(op) in COMPARE for op in node.ops):
            for part in (node.left, *node.comparators):
                self._check(part)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS
            and not node.keywords
        ):
            for arg in node.args:
                self._check(arg)
        elif isinstance(node, ast.Attribute):  # Delphes' Jet.PT: a branch name with a dot
            raise ExpressionError(
                f"'{self.text}': '{ast.unparse(node)}' is not supported; a branch whose name is "
                f"not a Python name is written in backquotes: `{ast.unparse(node)}`"
            )
        else:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(
                f"'{self.text}': '{ast.unparse(node)}' is not supported (branches, numbers, arithmetic, "
                f"comparisons, and/or/not, and the functions {allowed})"
            )

    def _check_power(self, node: ast.BinOp) -> None:
        """No power of constants inside a power, and no constant exponent above MAX_EXPONENT."""
        for part in (node.left, node.right):
            for inner in ast.walk(part):
                if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Pow) and _is_constant(inner):
                    raise ExpressionError(
                        f"'{self.text}': nested constant powers ('{ast.unparse(node)}') are not "
                        f"allowed; write the value of '{ast.unparse(inner)}' as a number"
                    )
        if not _is_constant(node.right):
            return
        exponent = float(self._constant(node.right))
        if not abs(exponent) <= MAX_EXPONENT:  # also catches NaN
            raise ExpressionError(
                f"'{self.text}': exponent '{ast.unparse(node.right)}' = {exponent:g} is too large "
                f"(at most {MAX_EXPONENT} in absolute value)"
            )
        if _is_constant(node.left):
            self._constant(node)  # 1e10 ** 64 overflows: here, not in a read task

    def _constant(self, node: ast.AST) -> Any:
        try:
            with np.errstate(all="ignore"):
                return self._eval(node, {})
        except (ArithmeticError, ValueError, TypeError) as error:
            raise ExpressionError(f"'{self.text}': '{ast.unparse(node)}' cannot be computed ({error})") from None

    def evaluate(self, arrays: dict[str, Any]) -> Any:
        return self._eval(self._tree, arrays)

    def _eval(self, node: ast.AST, arrays: dict[str, Any]) -> Any:
        if isinstance(node, ast.Name):
            return arrays[self._branch(node.id)]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](self._eval(node.left, arrays), self._eval(node.right, arrays))
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, arrays)
            if isinstance(node.op, ast.USub):
                return -value
            if isinstance(node.op, ast.UAdd):
                return value
            return np.logical_not(value)
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return reduce(combine, (self._eval(v, arrays) for v in node.values))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, arrays)
            result = None
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, arrays)
                part = COMPARE[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        assert isinstance(node, ast.Call)
        return FUNCTIONS[node.func.id](*(self._eval(arg, arrays) for arg in node.args))


def _is_constant(node: ast.AST) -> bool:
    """The expression reads no branch (only numbers and functions of them)."""
    called = {id(inner.func) for inner in ast.walk(node) if isinstance(inner, ast.Call)}
    return not any(isinstance(inner, ast.Name) and id(inner) not in called for inner in ast.walk(node))
