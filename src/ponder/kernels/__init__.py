"""Fast paths the methods use: loops with their backward written out (ACT's over a tanh RNN
or an LSTM cell, ``act_rnn`` and ``act_lstm``, over the ragged row sets of ``rows``;
PonderNet's over a tanh RNN, ``pondernet_rnn``; Repeat's over an LSTM, ``repeat_lstm``), the
LSTM cell's equations they share (``lstm``) and a faster CPU tanh (``tanh``). They import
nothing of ponder's but each other."""
