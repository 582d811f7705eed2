"""Can the train step donate its params and optimizer state? Only if a donating update issued the moment
an asynchronous save returns cannot change what that save writes (issue 23 item 6: "buffer donation
adopted once a test shows Orbax has copied arrays to the host before `save` returns").

On the CPU, Orbax keeps zero-copy host views of the arrays until the write is done, so the runtime
refuses that donation (the update writes new buffers) and the checkpoint is intact; on a GPU the
arrays must be copied to the host, so the same assertion holds for a different reason. This test is
the one to run on a GPU before `make_train_step` donates: it has run on the CPU only.
"""

import jax
import jax.numpy as jnp
import numpy as np

from framework.checkpoints import store


def _overwrite(params, opt_state):
    return jax.tree.map(lambda x: x * 0 - 5, params), jax.tree.map(lambda x: x * 0 - 9, opt_state)


def test_a_donating_update_right_after_an_async_save_returns_leaves_the_checkpoint_intact(tmp_path):
    mgr = store.open_manager(str(tmp_path), writer=True)
    # 64 MiB in all, so the write is still going when `save` returns
    params = {f"w{i}": jnp.full((1 << 21,), float(i + 1), jnp.float32) for i in range(4)}
    opt_state = {k: v * 2 for k, v in params.items()}
    saved = jax.tree.map(np.array, (params, opt_state))  # copies, taken before anything can change them
    donating = jax.jit(_overwrite, donate_argnums=(0, 1))

    store.save(mgr, 1, params=params, opt_state=opt_state, sampler_state={"order": np.zeros(2)},
               progress={"step": 1}, metadata={})
    new_params, new_opt_state = jax.block_until_ready(donating(params, opt_state))
    assert float(new_params["w0"][0]) == -5.0  # the update ran
    store.seal_finished(mgr)

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (new_params, new_opt_state))
    restored = store.restore(mgr, 1, params=abstract[0], opt_state=abstract[1])
    for want, got in zip(jax.tree.leaves(saved), jax.tree.leaves((restored["params"], restored["opt_state"])),
                         strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)

    # Not vacuous: on this backend donation is real once nothing holds the buffers (the inputs are
    # consumed and their memory is reused), so an unprotected save would have been overwritten.
    pointers = {x.unsafe_buffer_pointer() for x in jax.tree.leaves((new_params, new_opt_state))}
    again = donating(new_params, new_opt_state)
    assert all(x.is_deleted() for x in jax.tree.leaves((new_params, new_opt_state)))
    assert {x.unsafe_buffer_pointer() for x in jax.tree.leaves(again)} == pointers
