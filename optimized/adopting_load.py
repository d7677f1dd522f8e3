"""torch's `load_state_dict`, checked before it changes anything and followed by the fast path's adoption.

The fast classes keep their state in flat buffers and `optimizer.state[p]` holds views of them (docs/layout.md).
A load must therefore end with the loaded values copied into the buffers. torch's load runs the user's hooks; a
temporary pre-hook, registered last, checks what those returned (reference.checkpoint) before torch changes
anything, and a temporary post-hook, registered first, adopts it, so that the user's post-hooks see the views.
"""

from __future__ import annotations

from reference.checkpoint import check_state_dict


def load_adopting(optimizer, state_dict, load, adopt) -> None:
    """`load(state_dict)` (torch's load_state_dict, or a subclass's path to it), then `adopt(final)`, where `final`
    is the state_dict the last pre-hook returned: the saved values, before torch's cast to the parameter dtype."""
    final = []

    def check(opt, sd):
        check_state_dict(opt, sd)
        final.append(sd)

    pre = optimizer.register_load_state_dict_pre_hook(check)
    post = optimizer.register_load_state_dict_post_hook(lambda _: adopt(final[-1]), prepend=True)
    try:
        load(state_dict)
    finally:
        pre.remove()
        post.remove()
